-- One atomic take over every bucket a call matches (see bucket.py for the same steps in
-- Python; the contract tests hold both to the same answers).
--
-- KEYS[i]  bucket i (all keys share one hash tag, so one call works on Redis Cluster)
-- ARGV     4 values per bucket: rate (tokens per second), burst, cost, enforced (1 or 0)
-- returns  {admitted, then per bucket: remaining, retry_after_ms, reset_ms}
--
-- Time is Redis's own TIME, so service replicas with skewed clocks agree. Redis >= 5
-- replicates a script's effects rather than the script, so calling TIME before writing is
-- allowed; older servers need redis.replicate_commands() first.
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local count = #KEYS
local tokens = {}
local admitted = 1
for i = 1, count do
  local rate = tonumber(ARGV[4 * i - 3])
  local burst = tonumber(ARGV[4 * i - 2])
  local cost = tonumber(ARGV[4 * i - 1])
  local state = redis.call('HMGET', KEYS[i], 't', 'u')
  local available = tonumber(state[1])
  local updated = tonumber(state[2])
  if available == nil or updated == nil then
    available = burst  -- a missing bucket is a full one
  else
    local elapsed = now - updated
    if elapsed < 0 then elapsed = 0 end
    available = math.min(burst, available + elapsed * rate)
  end
  tokens[i] = available
  if available < cost and ARGV[4 * i] == '1' then admitted = 0 end
end

local out = {admitted}
for i = 1, count do
  local rate = tonumber(ARGV[4 * i - 3])
  local burst = tonumber(ARGV[4 * i - 2])
  local cost = tonumber(ARGV[4 * i - 1])
  local available = tokens[i]
  local wait = 0
  if available < cost then
    wait = (cost - available) / rate
  elseif admitted == 1 then
    available = available - cost
    redis.call('HSET', KEYS[i], 't', string.format('%.17g', available),
      'u', string.format('%.17g', now))
    -- Forget the bucket once it would be full again: a missing bucket reads as full.
    redis.call('PEXPIRE', KEYS[i], math.ceil((burst - available) / rate * 1000) + 1000)
  end
  out[#out + 1] = math.floor(available)
  out[#out + 1] = math.ceil(wait * 1000)
  out[#out + 1] = math.ceil((burst - available) / rate * 1000)
end
return out
