-- dead_page: ARGV = after, limit.  A page of the dead letters, oldest death first.  `after` is ""
-- or "<dead_at_us>:<id>" of the last dead letter of the previous page: the page starts after its
-- rank (O(log N)); when it left meanwhile (replayed, purged), at the rank it would have.
-- Returns {letters, cursor}: `letters` one string holding, per dead letter, "<id> <dead_at_us>
-- <info length> <body length>\n<info><body>" (info: "<attempts>:<priority>:<enqueued_us>:<reason>");
-- cursor "" when none follows.
local limit = tonumber(ARGV[2])
local start = 0
if ARGV[1] ~= '' then
  local score, id = string.match(ARGV[1], '^([^:]+):(.+)$')
  local rank = redis.call('ZRANK', dead_key, id)
  if rank then
    start = rank + 1
  else
    redis.call('ZADD', dead_key, score, id)
    start = redis.call('ZRANK', dead_key, id)
    redis.call('ZREM', dead_key, id)
  end
end
local dead = redis.call('ZRANGE', dead_key, start, start + limit, 'WITHSCORES') -- one more: is there another page?
local n = math.min(#dead / 2, limit)
local parts = {}
for first = 1, n, 1000 do
  local last = math.min(first + 999, n)
  local ids = {}
  local keys = {}
  for i = first, last do
    ids[#ids + 1] = dead[i * 2 - 1]
    keys[#keys + 1] = body_key(dead[i * 2 - 1])
  end
  local infos = redis.call('HMGET', deadinfo_key, unpack(ids))
  local bodies = redis.call('MGET', unpack(keys))
  for i = first, last do
    local info = infos[i - first + 1] or ''
    local body = bodies[i - first + 1] or ''
    parts[i] = dead[i * 2 - 1] .. ' ' .. dead[i * 2] .. ' ' .. #info .. ' ' .. #body .. '\n' .. info .. body
  end
end
local cursor = ''
if #dead / 2 > limit then cursor = dead[limit * 2] .. ':' .. dead[limit * 2 - 1] end
return {table.concat(parts), cursor}
