-- Shared head of every asynctask Redis script (the transport prepends it to each one).
--
-- KEYS[1] is the queue's key prefix "{<key_prefix>:<queue>}:" (the braces are the Redis Cluster
-- hash tag, so every key built from it lives in the same slot).  Times are integer microseconds
-- of the server's clock (TIME), so clients with skewed clocks agree on leases and delays.
local base = KEYS[1]
local leased_key = base .. 'leased'
local delayed_key = base .. 'delayed'
local dead_key = base .. 'dead'
local wake_key = base .. 'wake'

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The task id inside a receipt "<sequence>:<id>" (a receipt is also the member of the leased set).
local function id_of(receipt)
  local colon = string.find(receipt, ':', 1, true)
  if not colon then return nil end
  return string.sub(receipt, colon + 1)
end

-- Move due delayed tasks and expired leases to the back of their ready lists, at most `bound` of each.
local function promote(now, bound)
  local due = redis.call('ZRANGEBYSCORE', delayed_key, '-inf', now, 'LIMIT', 0, bound)
  for i = 1, #due do
    local id = due[i]
    redis.call('ZREM', delayed_key, id)
    local p = redis.call('HGET', base .. 'task:' .. id, 'p')
    if p then redis.call('LPUSH', base .. 'ready:' .. p, id) end
  end
  local expired = redis.call('ZRANGEBYSCORE', leased_key, '-inf', now, 'LIMIT', 0, bound)
  for i = 1, #expired do
    local receipt = expired[i]
    redis.call('ZREM', leased_key, receipt)
    local id = id_of(receipt)
    local p = id and redis.call('HGET', base .. 'task:' .. id, 'p')
    if p then redis.call('LPUSH', base .. 'ready:' .. p, id) end
  end
end

-- Record a dead letter for task `id` (its hash keeps body, priority and attempts).
local function bury(id, reason, now)
  redis.call('HSET', base .. 'task:' .. id, 'x', reason, 'd', now)
  redis.call('ZADD', dead_key, now, id)
end
