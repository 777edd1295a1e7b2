-- take: ARGV = max_count (at most 1000), lease_us, promote_bound.  Reserves up to max_count waiting
-- tasks for a transfer (export, migrate) without waiting: ready ones first (highest priority
-- first, each list from its front), then delayed ones (soonest due first), after moving due
-- delayed tasks and expired leases to ready as a fetch does.  Each goes to the leased set under the
-- receipt "<seq>:<entry>" with its entry unchanged: a take is not a delivery, so its attempts stay,
-- and an expired lease puts the entry back ready as a delivery's would; ack removes it for good.
-- Tasks in the leased set (held by a worker, or taken already) are left alone.
-- Returns one string holding, per task, "<receipt> <delay_left_us> <body length>\n<body>".
local max_count = tonumber(ARGV[1])
local now = now_us()
promote(now, tonumber(ARGV[3]))
local deadline = string.format('%.0f', now + tonumber(ARGV[2]))
local entries = {}
local delays = {}
local keys = {}
local n = 0
local p = 9
while p >= 0 and n < max_count do
  local popped = redis.call('RPOP', ready_key(p), max_count - n)
  if popped then
    for i = 1, #popped do
      local entry = popped[i]
      local _, _, _, id = string.match(entry, ENTRY)
      if id then
        n = n + 1
        entries[n] = entry
        delays[n] = '0'
        keys[n] = body_key(id)
      else
        -- not an entry this transport wrote: keep the raw text as a dead letter's body (as fetch)
        local raw_id = redis.sha1hex(entry .. '|' .. now .. '|' .. i)
        redis.call('SET', body_key(raw_id), entry)
        bury(raw_id, 1, p, string.format('%.0f', now), 'undecodable task body: not a task entry', now)
      end
    end
  else
    p = p - 1
  end
end
if n < max_count then
  local due = redis.call('ZRANGE', delayed_key, 0, max_count - n - 1, 'WITHSCORES')
  local gone = {}
  for i = 1, #due, 2 do
    local _, _, _, id = string.match(due[i], ENTRY)
    if id then
      n = n + 1
      entries[n] = due[i]
      delays[n] = string.format('%.0f', math.max(tonumber(due[i + 1]) - now, 0))
      keys[n] = body_key(id)
      gone[#gone + 1] = due[i]
    end
  end
  if #gone > 0 then redis.call('ZREM', delayed_key, unpack(gone)) end
end
if n == 0 then return '' end
local seq = redis.call('INCR', base .. 'seq') .. ':'
local bodies = redis.call('MGET', unpack(keys))
local zargs = {}
local parts = {}
for i = 1, n do
  local receipt = seq .. entries[i]
  local body = bodies[i] or ''
  zargs[i * 2 - 1] = deadline
  zargs[i * 2] = receipt
  parts[i] = receipt .. ' ' .. delays[i] .. ' ' .. #body .. '\n' .. body
end
redis.call('ZADD', leased_key, unpack(zargs))
return table.concat(parts)
