-- cancel: ARGV = id, promote_bound.  Removes the task when it waits (ready, or delayed): its entry,
-- its body, and wake tokens beyond one.  Returns 1 when it did, 0 when the task is leased, dead,
-- unknown or gone (acked, purged, cancelled).
--
-- Nothing indexes a waiting task by id, so its entry is looked for: the leased and delayed sets by
-- ZSCAN MATCH (in C), then the ready lists from the newest entry on, 1000 at a time, each chunk
-- searched as one string.  Acked, unknown and dead tasks are answered at once (no body, or a
-- member of the dead set); a ready one costs a walk of the lists up to it.
local id = ARGV[1]
if not string.match(id, '^[%w_%-]+$') then return 0 end
local body = body_key(id)
if redis.call('EXISTS', body) == 0 then return 0 end
if redis.call('ZSCORE', dead_key, id) then return 0 end -- dead letters keep their bodies
-- what a fetch would see now: an expired lease is waiting again, a due delayed task is ready
promote(now_us(), tonumber(ARGV[2]))

local function gone()
  redis.call('DEL', body)
  redis.call('LTRIM', wake_key, 0, 0)
  return 1
end

-- the member of a sorted set (entry, or receipt) naming the task, or nil
local function member(key)
  local cursor = '0'
  repeat
    local reply = redis.call('ZSCAN', key, cursor, 'MATCH', '*:' .. id, 'COUNT', 1000)
    cursor = reply[1]
    if reply[2][1] then return reply[2][1] end
  until cursor == '0'
  return nil
end

if member(leased_key) then return 0 end
local entry = member(delayed_key)
if entry then
  redis.call('ZREM', delayed_key, entry)
  return gone()
end
local needle = ':' .. id .. '\n'
for p = 9, 0, -1 do
  local key = ready_key(p)
  local len = redis.call('LLEN', key)
  for start = 0, len - 1, 1000 do
    local chunk = redis.call('LRANGE', key, start, start + 999)
    if string.find(table.concat(chunk, '\n') .. '\n', needle, 1, true) then
      for i = 1, #chunk do
        local _, _, _, found = string.match(chunk[i], ENTRY)
        if found == id then
          redis.call('LREM', key, 1, chunk[i])
          return gone()
        end
      end
    end
  end
end
return 0
