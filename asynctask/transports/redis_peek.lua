-- peek: ARGV = after, limit, promote_bound.  A page of the waiting tasks, taking nothing: the ready
-- lists from priority 9 down, each from its front, then the delayed set, soonest due first (due
-- delayed tasks and expired leases first move to ready, as a fetch moves them).  `after` is "" or
-- the cursor of the last task of the previous page: "r<p>:<read>:<entry>" (the task <read> places
-- from the front of ready list p) or "d:<due_us>:<entry>".  A cursor whose task moved meanwhile
-- is found again: LPOS in the list (not found: popped, so those before it went too: from the
-- front), and in the delayed set the rank it would have.
-- Returns {tasks, cursor}: `tasks` one string holding, per task, "<entry> <delay_left_us> <body
-- length>\n<body>"; cursor "" when no task follows.
local limit = tonumber(ARGV[2])
local want = limit + 1 -- one more than a page: tells whether another follows
local now = now_us()
promote(now, tonumber(ARGV[3]))
local entries = {}
local delays = {}
local cursors = {}
local n = 0
local p = 9
local read = 0
local delayed_start = 0
local after = ARGV[1]
if after ~= '' then
  local section, place, entry = string.match(after, '^([rd]%d?):([^:]+):(.+)$')
  if section == 'd' then
    p = -1
    local rank = redis.call('ZRANK', delayed_key, entry)
    if rank then
      delayed_start = rank + 1
    else -- gone meanwhile: the first task after it is at the rank it would have
      redis.call('ZADD', delayed_key, place, entry)
      delayed_start = redis.call('ZRANK', delayed_key, entry)
      redis.call('ZREM', delayed_key, entry)
    end
  elseif section then
    p = tonumber(string.sub(section, 2))
    read = tonumber(place)
    local key = ready_key(p)
    if read < 1 or redis.call('LINDEX', key, -read) ~= entry then
      local pos = redis.call('LPOS', key, entry, 'RANK', -1)
      read = pos and redis.call('LLEN', key) - pos or 0
    end
  end
end
while p >= 0 and n < want do
  -- LRANGE gives the list back to front: the front end of it is its last element
  local chunk = redis.call('LRANGE', ready_key(p), -(read + want - n), -(read + 1))
  for i = #chunk, 1, -1 do
    read = read + 1
    if string.match(chunk[i], ENTRY) then
      n = n + 1
      entries[n] = chunk[i]
      delays[n] = '0'
      cursors[n] = 'r' .. p .. ':' .. read .. ':' .. chunk[i]
    end
  end
  if n < want then
    p = p - 1
    read = 0
  end
end
if n < want then
  local due = redis.call('ZRANGE', delayed_key, delayed_start, delayed_start + want - n - 1, 'WITHSCORES')
  for i = 1, #due, 2 do
    if string.match(due[i], ENTRY) then
      n = n + 1
      entries[n] = due[i]
      delays[n] = string.format('%.0f', math.max(tonumber(due[i + 1]) - now, 0))
      cursors[n] = 'd:' .. due[i + 1] .. ':' .. due[i]
    end
  end
end
local keep = math.min(n, limit)
local parts = {}
for first = 1, keep, 1000 do
  local last = math.min(first + 999, keep)
  local keys = {}
  for i = first, last do
    local _, _, _, id = string.match(entries[i], ENTRY)
    keys[#keys + 1] = body_key(id)
  end
  local bodies = redis.call('MGET', unpack(keys))
  for i = first, last do
    local body = bodies[i - first + 1] or ''
    parts[i] = entries[i] .. ' ' .. delays[i] .. ' ' .. #body .. '\n' .. body
  end
end
local cursor = ''
if n > limit then cursor = cursors[limit] end
return {table.concat(parts), cursor}
