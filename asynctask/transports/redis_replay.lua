-- replay: ARGV = limit, id...  Gives the named dead tasks (or, with no id, up to `limit` of the
-- oldest) back to their ready lists as new (attempts 0, enqueued now).  Returns how many.
local now = string.format('%.0f', now_us())
local ids = chosen_dead_ids()
local entries = {}
for i = 1, #ids do
  local id = ids[i]
  if redis.call('ZREM', dead_key, id) == 1 then
    local info = redis.call('HGET', deadinfo_key, id) or ''
    local _, p = string.match(info, '^(%d+):(%d):')
    redis.call('HDEL', deadinfo_key, id)
    entries[#entries + 1] = '0:' .. (p or '0') .. ':' .. now .. ':' .. id
  end
end
if #entries > 0 then
  push_ready(entries)
  redis.call('LPUSH', wake_key, 1)
end
return #entries
