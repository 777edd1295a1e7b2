-- purge_dead: ARGV = limit, id...  Deletes the named dead tasks (or, with no id, up to `limit` of
-- the oldest) for good, bodies included.  Returns how many.
local ids = chosen_dead_ids()
local count = 0
for i = 1, #ids do
  local id = ids[i]
  if redis.call('ZREM', dead_key, id) == 1 then
    redis.call('HDEL', deadinfo_key, id)
    redis.call('DEL', body_key(id))
    count = count + 1
  end
end
return count
