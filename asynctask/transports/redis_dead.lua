-- dead: ARGV = receipt1, reason1, receipt2, reason2, ...  Moves each current delivery to the dead
-- letters (the body stays in the body hash).  Returns how many.
local now = now_us()
local n = 0
for i = 1, #ARGV, 2 do
  local receipt = ARGV[i]
  if redis.call('ZREM', leased_key, receipt) == 1 then
    local entry, a, p, e, id = string.match(receipt, RECEIPT)
    if entry then
      bury(id, a, p, e, ARGV[i + 1], now)
      n = n + 1
    end
  end
end
return n
