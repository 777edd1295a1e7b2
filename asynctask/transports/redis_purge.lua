-- purge: ARGV = limit.  Deletes up to `limit` ready or delayed tasks; returns how many.
local limit = tonumber(ARGV[1])
local gone = {}
for p = 9, 0, -1 do
  if #gone >= limit then break end
  local entries = redis.call('RPOP', ready_key(p), limit - #gone)
  if entries then
    for i = 1, #entries do gone[#gone + 1] = entries[i] end
  end
end
if #gone < limit then
  local entries = redis.call('ZRANGE', delayed_key, 0, limit - #gone - 1)
  if #entries > 0 then
    redis.call('ZREM', delayed_key, unpack(entries))
    for i = 1, #entries do gone[#gone + 1] = entries[i] end
  end
end
local ids = {}
for i = 1, #gone do
  local _, _, _, id = string.match(gone[i], ENTRY)
  if id then ids[#ids + 1] = body_key(id) end
end
if #ids > 0 then redis.call('DEL', unpack(ids)) end
return #gone
