-- ack: ARGV = receipt... ; deletes each task whose delivery is current.  Returns how many.
local n = 0
for i = 1, #ARGV do
  local receipt = ARGV[i]
  if redis.call('ZREM', leased_key, receipt) == 1 then
    redis.call('DEL', base .. 'task:' .. id_of(receipt))
    n = n + 1
  end
end
return n
