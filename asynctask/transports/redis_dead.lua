-- dead: ARGV = receipt1, reason1, receipt2, reason2, ...  Moves each current delivery to the
-- dead letters (its hash keeps body and attempts; adds reason x and time d).  Returns how many.
local now = now_us()
local n = 0
for i = 1, #ARGV, 2 do
  local receipt = ARGV[i]
  if redis.call('ZREM', leased_key, receipt) == 1 then
    bury(id_of(receipt), ARGV[i + 1], now)
    n = n + 1
  end
end
return n
