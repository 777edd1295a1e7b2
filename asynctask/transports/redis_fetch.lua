-- fetch: ARGV = max_count, lease_us, promote_bound.
-- Returns {sequence, wait_us, task...}: each task is "id|attempts|enqueued_us|priority|body"; its
-- receipt is "<sequence>:<id>".  wait_us (only when no task came) is how long until the next delayed
-- task or lease is due, -1 when none is.
local max_count = tonumber(ARGV[1])
local now = now_us()
promote(now, tonumber(ARGV[3]))
local seq = redis.call('INCR', base .. 'seq')
local deadline = now + tonumber(ARGV[2])
local out = {seq, -1}
local zargs = {}
local n = 0
local p = 9
while p >= 0 and n < max_count do
  local ids = redis.call('RPOP', base .. 'ready:' .. p, max_count - n)
  if ids then
    for i = 1, #ids do
      local id = ids[i]
      local key = base .. 'task:' .. id
      local rec = redis.call('HMGET', key, 'b', 'e')
      if rec[1] then
        local attempts = redis.call('HINCRBY', key, 'a', 1)
        local receipt = seq .. ':' .. id
        zargs[#zargs + 1] = deadline
        zargs[#zargs + 1] = receipt
        n = n + 1
        out[n + 2] = id .. '|' .. attempts .. '|' .. (rec[2] or '0') .. '|' .. p .. '|' .. rec[1]
      else
        -- not a task this transport stored: keep the raw entry as a dead letter
        local raw_id = redis.sha1hex(id .. '|' .. seq .. '|' .. i)
        redis.call('HSET', base .. 'task:' .. raw_id, 'b', id, 'p', p, 'e', now, 'a', 1)
        bury(raw_id, 'undecodable task body: ready-list entry is not a stored task id', now)
      end
    end
  else
    p = p - 1
  end
end
if n > 0 then redis.call('ZADD', leased_key, unpack(zargs)) end
-- Wake bookkeeping: a token per "something became ready"; drop stale ones when the queue is empty,
-- leave one for the next waiter when tasks remain.
local more = false
if n == max_count then
  for q = p, 0, -1 do
    if redis.call('LLEN', base .. 'ready:' .. q) > 0 then more = true break end
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
  if next_due then out[2] = math.max(next_due - now, 0) end
end
return out
