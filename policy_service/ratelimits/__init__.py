"""Within budget: token-bucket rate limits, shared through Redis or kept in process."""
