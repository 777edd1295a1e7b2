-- dead_list: ARGV = limit.  Returns {id, body, reason, attempts, dead_at_us, priority, enqueued_us, ...},
-- oldest death first.
local dead = redis.call('ZRANGE', dead_key, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #dead, 2 do
  local id = dead[i]
  local info = redis.call('HGET', deadinfo_key, id) or ''
  local a, p, e, reason = string.match(info, '^(%d+):(%d):(%d+):(.*)$')
  out[#out + 1] = id
  out[#out + 1] = redis.call('GET', body_key(id)) or ''
  out[#out + 1] = reason or info
  out[#out + 1] = a or '0'
  out[#out + 1] = dead[i + 1]
  out[#out + 1] = p or '0'
  out[#out + 1] = e or '0'
end
return out
