-- submit: ARGV = delay_us, priority, ids, bodies.  `ids` is the tasks' 32-character ids run
-- together, `bodies` their JSON bodies joined by "\n" (compact JSON never holds a raw newline).
-- Returns how many were stored: an id already stored is skipped, so a call retried after a lost
-- reply never duplicates a task.
local now = now_us()
local delay = tonumber(ARGV[1])
local priority = ARGV[2]
local id_text = ARGV[3]
local body_text = ARGV[4]
local prefix = '0:' .. priority .. ':' .. string.format('%.0f', now) .. ':'
local count = #id_text / 32
local entries = {}
if count == 1 then
  if not redis.call('SET', body_key(id_text), body_text, 'NX') then return 0 end
  entries[1] = prefix .. id_text
else
  local keys = {}
  local fields = {}
  local pos = 1
  for i = 1, count do
    local id = string.sub(id_text, i * 32 - 31, i * 32)
    local stop = string.find(body_text, '\n', pos, true) or (#body_text + 1)
    keys[i] = body_key(id)
    fields[i * 2 - 1] = keys[i]
    fields[i * 2] = string.sub(body_text, pos, stop - 1)
    entries[i] = prefix .. id
    pos = stop + 1
  end
  if redis.call('EXISTS', unpack(keys)) == 0 then
    redis.call('MSET', unpack(fields))
  else
    local fresh = {}
    for i = 1, count do
      if redis.call('SET', keys[i], fields[i * 2], 'NX') then fresh[#fresh + 1] = entries[i] end
    end
    entries = fresh
    if #entries == 0 then return 0 end
  end
end
if delay > 0 then
  local due = now + delay
  local zargs = {}
  for i = 1, #entries do
    zargs[#zargs + 1] = due
    zargs[#zargs + 1] = entries[i]
  end
  redis.call('ZADD', delayed_key, unpack(zargs))
else
  redis.call('LPUSH', ready_key(priority), unpack(entries))
end
redis.call('LPUSH', wake_key, 1)
return #entries
