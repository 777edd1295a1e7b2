-- stats: ARGV = promote_bound.  Returns {ready, delayed, in_flight, dead, oldest_ready_age_us or -1}.
-- The oldest ready task is looked for at the head of each priority list.
local now = now_us()
promote(now, tonumber(ARGV[1]))
local ready = 0
local oldest = nil
for p = 0, 9 do
  local key = ready_key(p)
  local len = redis.call('LLEN', key)
  if len > 0 then
    ready = ready + len
    local head = redis.call('LINDEX', key, -1)
    local _, _, e = string.match(head or '', ENTRY)
    e = tonumber(e)
    if e and (oldest == nil or e < oldest) then oldest = e end
  end
end
local age = -1
if oldest then age = math.max(now - oldest, 0) end
return {ready, redis.call('ZCARD', delayed_key), redis.call('ZCARD', leased_key), redis.call('ZCARD', dead_key), age}
