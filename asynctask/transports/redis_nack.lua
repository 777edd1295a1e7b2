-- nack: ARGV = receipt, delay_us, count_attempt (1/0).  Returns 1 when the delivery was current.
local receipt = ARGV[1]
if redis.call('ZREM', leased_key, receipt) == 0 then return 0 end
local entry, a, p, e, id = string.match(receipt, RECEIPT)
if not entry then return 0 end
if ARGV[3] == '0' then entry = math.max(a - 1, 0) .. ':' .. p .. ':' .. e .. ':' .. id end
local delay = tonumber(ARGV[2])
if delay > 0 then
  redis.call('ZADD', delayed_key, now_us() + delay, entry)
else
  redis.call('LPUSH', ready_key(p), entry)
end
redis.call('LPUSH', wake_key, 1)
return 1
