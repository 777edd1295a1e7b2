-- replay: ARGV = limit, id...  Gives the named dead tasks (or, with no id, up to `limit` of the
-- oldest) back to their ready list as new (attempts 0, enqueued now).  Returns how many.
local now = now_us()
local ids = {}
if #ARGV > 1 then
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', dead_key, 0, tonumber(ARGV[1]) - 1)
end
local n = 0
for i = 1, #ids do
  local id = ids[i]
  if redis.call('ZREM', dead_key, id) == 1 then
    local key = base .. 'task:' .. id
    local p = redis.call('HGET', key, 'p') or '0'
    redis.call('HSET', key, 'a', 0, 'e', now, 'p', p)
    redis.call('HDEL', key, 'x', 'd')
    redis.call('LPUSH', base .. 'ready:' .. p, id)
    n = n + 1
  end
end
if n > 0 then redis.call('LPUSH', wake_key, 1) end
return n
