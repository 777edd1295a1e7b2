-- dead_list: ARGV = limit.  Returns {id, body, reason, attempts, dead_at_us, ...}, oldest death first.
local ids = redis.call('ZRANGE', dead_key, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  local rec = redis.call('HMGET', base .. 'task:' .. ids[i], 'b', 'x', 'a')
  out[#out + 1] = ids[i]
  out[#out + 1] = rec[1] or ''
  out[#out + 1] = rec[2] or ''
  out[#out + 1] = rec[3] or '0'
  out[#out + 1] = ids[i + 1]
end
return out
