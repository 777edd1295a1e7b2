-- nack: ARGV = receipt, delay_us, count_attempt (1/0).  Returns 1 when the delivery was current.
local receipt = ARGV[1]
if redis.call('ZREM', leased_key, receipt) == 0 then return 0 end
local id = id_of(receipt)
local key = base .. 'task:' .. id
local p = redis.call('HGET', key, 'p')
if not p then return 0 end
if ARGV[3] == '0' then redis.call('HINCRBY', key, 'a', -1) end
local delay = tonumber(ARGV[2])
if delay > 0 then
  redis.call('ZADD', delayed_key, now_us() + delay, id)
else
  redis.call('LPUSH', base .. 'ready:' .. p, id)
end
redis.call('LPUSH', wake_key, 1)
return 1
