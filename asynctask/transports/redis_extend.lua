-- extend: ARGV = receipt, lease_us.  Returns 1 when the delivery was current (lease renewed), else 0.
local receipt = ARGV[1]
if not redis.call('ZSCORE', leased_key, receipt) then return 0 end
redis.call('ZADD', leased_key, now_us() + tonumber(ARGV[2]), receipt)
return 1
