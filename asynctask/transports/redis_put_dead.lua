-- put_dead: ARGV = heads, body1, reason1, body2, reason2, ... (at most 1000 records).  `heads`
-- holds per record the line "<id> <attempts> <priority> <enqueued_us> <dead_at_us>\n" (0: now).
-- Stores each record whose id the queue does not hold (no body key: not waiting, held or dead) as
-- a dead letter, as a dead delivery leaves it.  Returns one character per record: "1" stored, "0"
-- skipped.
local now = string.format('%.0f', now_us())
local out = {}
local i = 0
for id, a, p, e, t in string.gmatch(ARGV[1], '([%w_%-]+) (%d+) (%d) (%d+) (%d+)\n') do
  i = i + 1
  if redis.call('ZSCORE', dead_key, id) == false and redis.call('SET', body_key(id), ARGV[i * 2], 'NX') then
    if e == '0' then e = now end
    if t == '0' then t = now end
    bury(id, a, p, e, ARGV[i * 2 + 1], t)
    out[i] = '1'
  else
    out[i] = '0'
  end
end
return table.concat(out)
