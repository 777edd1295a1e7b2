-- purge: ARGV = limit.  Deletes up to `limit` ready or delayed tasks; returns how many.
local limit = tonumber(ARGV[1])
local n = 0
for p = 9, 0, -1 do
  if n >= limit then break end
  local ids = redis.call('RPOP', base .. 'ready:' .. p, limit - n)
  if ids then
    for i = 1, #ids do redis.call('DEL', base .. 'task:' .. ids[i]) end
    n = n + #ids
  end
end
if n < limit then
  local ids = redis.call('ZRANGE', delayed_key, 0, limit - n - 1)
  for i = 1, #ids do
    redis.call('ZREM', delayed_key, ids[i])
    redis.call('DEL', base .. 'task:' .. ids[i])
  end
  n = n + #ids
end
return n
