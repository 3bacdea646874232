-- wrk script for bench/run.py: every request is the same MCP tools/call POST.
--
--   wrk -s bench/mcp_post.lua URL -- BODY_FILE HEADERS_FILE TOKENS_FILE
--
-- BODY_FILE    the JSON-RPC body, sent as is.
-- HEADERS_FILE one "Name: value" per line (Content-Type, Accept, MCP-Protocol-Version, ...).
-- TOKENS_FILE  one JWT per line; each request carries "Authorization: Bearer <token>".
--              With several tokens, requests rotate through them (each wrk thread starts at
--              a different offset), so a verified-token cache can be defeated on purpose.
--
-- All requests are formatted once in init(); request() only hands out prebuilt strings, so
-- the load generator's own Lua cost per request is a table lookup.

local prebuilt = {}
local count = 0
local next_index = 0
local threads_made = 0

-- Runs in wrk's main Lua state once per thread, before init() runs in that thread's state.
function setup(thread)
  thread:set("bench_thread_number", threads_made)
  threads_made = threads_made + 1
end

local function read_all(path)
  local file = assert(io.open(path, "rb"))
  local data = file:read("*a")
  file:close()
  return data
end

local function trim(text)
  return (text:gsub("^%s+", ""):gsub("%s+$", ""))
end

function init(args)
  local body = read_all(args[1])
  local headers = {}
  for line in io.lines(args[2]) do
    local name, value = line:match("^([^:]+):(.*)$")
    if name then
      headers[trim(name)] = trim(value)
    end
  end
  for token in io.lines(args[3]) do
    token = trim(token)
    if #token > 0 then
      headers["Authorization"] = "Bearer " .. token
      count = count + 1
      prebuilt[count] = wrk.format("POST", nil, headers, body)
    end
  end
  assert(count > 0, "no tokens in " .. args[3])
  -- Spread the threads over the token list instead of walking it in lockstep.
  next_index = ((bench_thread_number or 0) * 7919) % count
end

function request()
  next_index = next_index % count + 1
  return prebuilt[next_index]
end
