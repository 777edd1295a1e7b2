-- submit: ARGV = delay_us, priority, id1, body1, id2, body2, ...  Returns how many were stored.
-- An id already stored is skipped, so a retried call (reply lost) never duplicates a task.
local now = now_us()
local delay = tonumber(ARGV[1])
local priority = ARGV[2]
local fresh = {}
for i = 3, #ARGV, 2 do
  local key = base .. 'task:' .. ARGV[i]
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'b', ARGV[i + 1], 'p', priority, 'e', now, 'a', 0)
    fresh[#fresh + 1] = ARGV[i]
  end
end
local n = #fresh
if n == 0 then return 0 end
if delay > 0 then
  local due = now + delay
  for i = 1, n do redis.call('ZADD', delayed_key, due, fresh[i]) end
else
  local ready = base .. 'ready:' .. priority
  for i = 1, n, 1000 do redis.call('LPUSH', ready, unpack(fresh, i, math.min(i + 999, n))) end
end
redis.call('LPUSH', wake_key, 1)
return n
