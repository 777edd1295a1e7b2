-- put: ARGV = heads, body1, body2, ... (at most 1000 records).  `heads` holds per record the line
-- "<id> <attempts> <priority> <enqueued_us> <delay_us>\n" (enqueued_us 0: unknown, stored as now).
-- Stores each record whose id the queue does not hold as a waiting task with its attempts,
-- priority and enqueued time kept: ready at the back of its list, or delayed by delay_us.  A body
-- key lives from submit until ack or purge, dead letters included, so SET NX of the body skips an
-- id that waits, is held or is dead (and an id named twice in one call).
-- Returns one character per record: "1" stored, "0" skipped.
local now = string.format('%.0f', now_us())
local ready = {}
local zargs = {}
local out = {}
local i = 0
for id, a, p, e, d in string.gmatch(ARGV[1], '([%w_%-]+) (%d+) (%d) (%d+) (%d+)\n') do
  i = i + 1
  if redis.call('SET', body_key(id), ARGV[i + 1], 'NX') then
    if e == '0' then e = now end
    local entry = a .. ':' .. p .. ':' .. e .. ':' .. id
    if d == '0' then
      ready[#ready + 1] = entry
    else
      zargs[#zargs + 1] = string.format('%.0f', tonumber(now) + tonumber(d))
      zargs[#zargs + 1] = entry
    end
    out[i] = '1'
  else
    out[i] = '0'
  end
end
if #ready > 0 then push_ready(ready) end
if #zargs > 0 then redis.call('ZADD', delayed_key, unpack(zargs)) end
if #ready + #zargs > 0 then redis.call('LPUSH', wake_key, 1) end
return table.concat(out)
