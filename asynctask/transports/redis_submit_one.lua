-- submit_one (the hot path, run without redis_common.lua): KEYS[1] = the queue's key prefix,
-- ARGV = delay_us, priority, id, body.  Stores one task as redis_submit.lua does; returns 1, or 0
-- when the id is already stored (a call retried after a lost reply).
local base = KEYS[1]
local t = redis.call('TIME')
if not redis.call('SET', base .. 'b:' .. ARGV[3], ARGV[4], 'NX') then return 0 end
local entry = '0:' .. ARGV[2] .. ':' .. t[1] .. string.format('%06d', t[2]) .. ':' .. ARGV[3]
if ARGV[1] == '0' then
  redis.call('LPUSH', base .. 'ready:' .. ARGV[2], entry)
else
  redis.call('ZADD', base .. 'delayed', tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1]), entry)
end
redis.call('LPUSH', base .. 'wake', 1)
return 1
