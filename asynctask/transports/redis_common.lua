-- Shared head of every asynctask Redis script (the transport prepends it to each one).
--
-- KEYS[1] is the queue's key prefix "{<key_prefix>:<queue>}:" (the braces are the Redis Cluster
-- hash tag, so every key built from it lives in the same slot).  Times are integer microseconds
-- of the server's clock (TIME), so clients with skewed clocks agree on leases and delays.
--
-- A task's place is an "entry" <attempts>:<priority>:<enqueued_us>:<id> in a ready list or the
-- delayed set; a delivery's receipt "<seq>:<entry>" is its member of the leased set.  A body is
-- the string key base .. 'b:' .. id.
local base = KEYS[1]
local leased_key = base .. 'leased'
local delayed_key = base .. 'delayed'
local dead_key = base .. 'dead'
local deadinfo_key = base .. 'deadinfo'
local wake_key = base .. 'wake'
local ENTRY = '^(%d+):(%d):(%d+):([%w_%-]+)$'
local RECEIPT = '^%d+:((%d+):(%d):(%d+):([%w_%-]+))$'

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function body_key(id)
  return base .. 'b:' .. id
end

-- The ids a dead-letter script (replay, purge_dead) works on: ARGV[2..] when named, else up to
-- ARGV[1] of the oldest dead tasks.
local function chosen_dead_ids()
  if #ARGV > 1 then
    local ids = {}
    for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
    return ids
  end
  return redis.call('ZRANGE', dead_key, 0, tonumber(ARGV[1]) - 1)
end

local function ready_key(priority)
  return base .. 'ready:' .. priority
end

-- Push entries to the back of their ready lists (grouped per priority: one LPUSH each).
local function push_ready(entries)
  local groups = {}
  for i = 1, #entries do
    local _, p = string.match(entries[i], ENTRY)
    p = p or '0'
    local group = groups[p]
    if not group then group = {} groups[p] = group end
    group[#group + 1] = entries[i]
  end
  for p, group in pairs(groups) do
    for i = 1, #group, 1000 do
      redis.call('LPUSH', ready_key(p), unpack(group, i, math.min(i + 999, #group)))
    end
  end
end

-- Move due delayed tasks and expired leases to the back of their ready lists, at most `bound` each.
local function promote(now, bound)
  local due = redis.call('ZRANGEBYSCORE', delayed_key, '-inf', now, 'LIMIT', 0, bound)
  if #due > 0 then
    redis.call('ZREM', delayed_key, unpack(due))
    push_ready(due)
  end
  local expired = redis.call('ZRANGEBYSCORE', leased_key, '-inf', now, 'LIMIT', 0, bound)
  if #expired > 0 then
    redis.call('ZREM', leased_key, unpack(expired))
    local entries = {}
    for i = 1, #expired do
      local entry = string.match(expired[i], RECEIPT)
      if entry then entries[#entries + 1] = entry end
    end
    push_ready(entries)
  end
end

-- Record a dead letter: id -> died at in the dead set, "<attempts>:<priority>:<enqueued_us>:<reason>".
local function bury(id, attempts, priority, enqueued, reason, now)
  redis.call('HSET', deadinfo_key, id, attempts .. ':' .. priority .. ':' .. enqueued .. ':' .. reason)
  redis.call('ZADD', dead_key, now, id)
end
