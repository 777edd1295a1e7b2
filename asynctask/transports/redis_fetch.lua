-- fetch: ARGV = max_count, lease_us, promote_bound.
-- Returns {wait_us, tasks}: `tasks` is one string holding, per task, "<receipt> <body length>\n<body>";
-- wait_us (only when no task came) is how long until the next delayed task or lease is due, -1 when
-- none is.
local max_count = tonumber(ARGV[1])
local now = now_us()
promote(now, tonumber(ARGV[3]))
local deadline = string.format('%.0f', now + tonumber(ARGV[2]))
local NEXT = {['0'] = '1', ['1'] = '2', ['2'] = '3', ['3'] = '4', ['4'] = '5'}
local seq = nil
local receipts = {}
local keys = {}
local n = 0
local p = 9
while p >= 0 and n < max_count do
  local entries = redis.call('RPOP', ready_key(p), max_count - n)
  if entries then
    for i = 1, #entries do
      local entry = entries[i]
      local a, rest, id = string.match(entry, '^(%d+)(:%d:%d+:([%w_%-]+))$')
      if a then
        if not seq then seq = redis.call('INCR', base .. 'seq') .. ':' end
        n = n + 1
        receipts[n] = seq .. (NEXT[a] or string.format('%d', a + 1)) .. rest
        keys[n] = body_key(id)
      else
        -- not an entry this transport wrote: keep the raw text as a dead letter's body
        local raw_id = redis.sha1hex(entry .. '|' .. now .. '|' .. i)
        redis.call('SET', body_key(raw_id), entry)
        bury(raw_id, 1, p, string.format('%.0f', now), 'undecodable task body: not a task entry', now)
      end
    end
  else
    p = p - 1
  end
end
local out = {-1, ''}
if n > 0 then
  local bodies = redis.call('MGET', unpack(keys))
  local zargs = {}
  local parts = {}
  for i = 1, n do
    local body = bodies[i] or ''
    zargs[i * 2 - 1] = deadline
    zargs[i * 2] = receipts[i]
    parts[i] = receipts[i] .. ' ' .. #body .. '\n' .. body
  end
  redis.call('ZADD', leased_key, unpack(zargs))
  out[2] = table.concat(parts)
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
