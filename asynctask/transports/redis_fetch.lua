-- fetch: ARGV = max_count, lease_us, promote_bound.
-- Returns {wait_us, "receipt|body"...}.  wait_us (only when no task came) is how long until the
-- next delayed task or lease is due, -1 when none is.
local max_count = tonumber(ARGV[1])
local now = now_us()
promote(now, tonumber(ARGV[3]))
local seq = redis.call('INCR', base .. 'seq')
local deadline = now + tonumber(ARGV[2])
local out = {-1}
local receipts = {}
local ids = {}
local n = 0
local p = 9
while p >= 0 and n < max_count do
  local entries = redis.call('RPOP', ready_key(p), max_count - n)
  if entries then
    for i = 1, #entries do
      local entry = entries[i]
      local a, prio, e, id = string.match(entry, ENTRY)
      if a then
        n = n + 1
        receipts[n] = seq .. ':' .. (a + 1) .. ':' .. prio .. ':' .. e .. ':' .. id
        ids[n] = body_key(id)
      else
        -- not an entry this transport wrote: keep the raw text as a dead letter's body
        local raw_id = redis.sha1hex(entry .. '|' .. seq .. '|' .. i)
        redis.call('SET', body_key(raw_id), entry)
        bury(raw_id, 1, p, string.format('%.0f', now), 'undecodable task body: not a task entry', now)
      end
    end
  else
    p = p - 1
  end
end
if n > 0 then
  local bodies = redis.call('MGET', unpack(ids))
  local zargs = {}
  for i = 1, n do
    zargs[#zargs + 1] = deadline
    zargs[#zargs + 1] = receipts[i]
    out[i + 1] = receipts[i] .. '|' .. (bodies[i] or '')
  end
  redis.call('ZADD', leased_key, unpack(zargs))
end
-- Wake tokens: one per "something became ready"; stale ones are dropped when the queue is empty,
-- and one is left for the next waiter when tasks remain.
local more = false
if n == max_count then
  for q = p, 0, -1 do
    if redis.call('LLEN', ready_key(q)) > 0 then more = true break end
  end
end
if more then
  if redis.call('LLEN', wake_key) == 0 then redis.call('LPUSH', wake_key, 1) end
else
  redis.call('LTRIM', wake_key, 0, 0)
end
if n == 0 then
  local next_due = nil
  local d = redis.call('ZRANGE', delayed_key, 0, 0, 'WITHSCORES')
  if d[2] then next_due = tonumber(d[2]) end
  local l = redis.call('ZRANGE', leased_key, 0, 0, 'WITHSCORES')
  if l[2] and (next_due == nil or tonumber(l[2]) < next_due) then next_due = tonumber(l[2]) end
  if next_due then out[1] = math.max(next_due - now, 0) end
end
return out
