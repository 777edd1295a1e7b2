-- ack: ARGV = receipts joined by "\n".  Deletes each task whose delivery is current; returns how many.
local receipts = {}
for receipt in string.gmatch(ARGV[1], '[^\n]+') do receipts[#receipts + 1] = receipt end
if #receipts == 0 then return 0 end
local scores = redis.call('ZMSCORE', leased_key, unpack(receipts))
local current = {}
local ids = {}
for i = 1, #receipts do
  if scores[i] then
    local id = string.match(receipts[i], '^%d+:%d+:%d:%d+:([%w_%-]+)$')
    current[#current + 1] = receipts[i]
    ids[#ids + 1] = body_key(id)
  end
end
if #current == 0 then return 0 end
redis.call('ZREM', leased_key, unpack(current))
redis.call('DEL', unpack(ids))
return #current
