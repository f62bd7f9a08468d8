-- Durable publish: record each event in its merchant's history (and, for a job
-- event, its job state), then publish it, in one atomic step. One run publishes
-- one event or a batch of them, in order. Every durable publisher runs this file
-- (the gateway's HTTP API and CLI, the Python helper gateway.durable.publisher,
-- the Node snippet in docs/publishing.md).
--
-- ARGV[1]  history length  (sse.history; 0 keeps no history)
-- ARGV[2]  ttl seconds     (redis.history_ttl; also the job state's)
-- ARGV[3]  epoch candidate (random, [0-9a-z]{1,32}; kept only when a history starts;
--          the second and later histories a run starts, and any of a candidate over
--          24 characters, get its first 24 characters, 'z' and their count)
-- ARGV[4]  PUBLISH or SPUBLISH
-- ARGV[5]  jobs kept       (sse.snapshot_jobs)
-- ARGV[6]  idempotency ttl seconds (redis.idempotency_ttl)
-- then six ARGV per event:
--   channel   e.g. merchant:MERCHANT_ID:progress
--   event name
--   payload
--   job       (the payload's job key as text, 1-128 characters: up to 512 bytes; '' for none)
--   seq       (decimal >= 0; '' for none)
--   keyed     ('1' when the event has an idempotency key, else '0')
-- and, per event in the same order, its merchant's four KEYS, then its
-- idempotency key when it is keyed:
--   history stream   gateway:history:{MERCHANT_ID}
--   meta hash        gateway:meta:{MERCHANT_ID}    (fields epoch, offset)
--   job state hash   gateway:jobs:{MERCHANT_ID}    (job -> its latest event)
--   job index zset   gateway:jobids:{MERCHANT_ID}  (job -> offset of that event)
--   idempotency key  gateway:idem:{MERCHANT_ID}:KEY
-- On Redis Cluster every key of one run must share a slot: one merchant per run.
--
-- Returns an array with one answer per event: its id "EPOCH:OFFSET" (published
-- as NUL "gw1:" ID NUL PAYLOAD); "!stale" for a stale job event (nothing
-- recorded or published); "!dup:" and the first answer (an id or "!stale") when
-- its idempotency key was already used; or an error reply when Redis refused it
-- (nothing of it written or published; the other events go on): over maxmemory
-- (OOM), a key of another type (WRONGTYPE), a meta hash or stream not written by
-- this script (ERR). A key already used answers "!dup:" before any of these but
-- a wrong type of the other keys, as when its check came first. Bad ARGV refuse
-- the whole run (an error reply, nothing written).
-- Deterministic (no TIME, no random): fit for replication and managed Redis.
-- Needs Redis >= 7.0 (SET with both NX and GET).

local maxlen, ttl, candidate, command = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local kept, idem_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
if command ~= 'PUBLISH' and command ~= 'SPUBLISH' then
  return redis.error_reply('ERR publish.lua: ARGV[4] must be PUBLISH or SPUBLISH')
end
if not maxlen or maxlen < 0 or not ttl or ttl < 1 then
  return redis.error_reply('ERR publish.lua: bad history length or ttl')
end
if not string.match(candidate, '^[0-9a-z]+$') or #candidate > 32 then
  return redis.error_reply('ERR publish.lua: bad epoch candidate')
end
if not kept or kept < 1 or not idem_ttl or idem_ttl < 1 then
  return redis.error_reply('ERR publish.lua: bad jobs kept or idempotency ttl')
end
if #ARGV % 6 ~= 0 then
  return redis.error_reply('ERR publish.lua: six ARGV per event')
end
local key_count = 0
for a = 7, #ARGV, 6 do
  local job, seq, keyed = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  if #job > 512 or (seq ~= '' and (not string.match(seq, '^[0-9]+$') or #seq > 15))
      or (keyed ~= '0' and keyed ~= '1') then
    return redis.error_reply('ERR publish.lua: bad job, seq or keyed flag')
  end
  key_count = key_count + (keyed == '1' and 5 or 4)
end
if key_count ~= #KEYS then
  return redis.error_reply('ERR publish.lua: four KEYS per event, five when keyed')
end

local function wrongtype(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('WRONGTYPE publish.lua: ' .. key .. ' is a ' .. kind .. ', not a ' .. want)
  end
end

local function failed(reply)
  return type(reply) == 'table' and reply['err'] ~= nil
end

-- One event. Every check that can fail comes before its first write, so a
-- refused event changes nothing: the meta hash's type and fields, the job keys'
-- types (read with pcall: a key of the wrong type answers WRONGTYPE), the
-- stream's type and last id (XADD's own checks, when it is the first write). And
-- its first write is a command Redis checks against maxmemory (HSET, XADD or
-- SET, never DEL): Redis checks a flagless script for OOM only until its first
-- write, so over maxmemory a run is refused before it writes anything (and a run
-- that starts under the limit goes to its end).
-- With an idempotency key that first write is one SET ... NX GET: it checks the
-- key and records this publish's answer (its id, or "!stale") at once. One check
-- comes after it, XADD's own on the stream's type and last id: when XADD refuses,
-- the key is deleted again (it did not exist before: NX), so nothing is left.
-- The calls are few on purpose: each one costs Redis about a microsecond.
local started = 0  -- histories this run has started
local function publish(history, meta, jobs, jobids, idem, channel, event, payload, job, seq)
  local read = redis.pcall('HMGET', meta, 'epoch', 'offset')
  if failed(read) then return read end
  local epoch, offset = read[1], read[2]
  local fresh, refused = not epoch, nil
  if fresh then
    -- a new history: whatever an earlier one left is not part of it. Each history
    -- this run starts gets its own epoch, so an id of one merchant is never of
    -- another's epoch (a client that mixes them up gets resync, not a replay).
    -- Unique within the run, whatever the candidate: the first keeps it when it has
    -- at most 24 characters; every other one is its first 24, 'z' and the count
    -- (26 or more characters, so never a kept candidate, and distinct by count).
    started = started + 1
    if started == 1 and #candidate <= 24 then
      epoch = candidate
    else
      epoch = string.sub(candidate, 1, 24) .. 'z' .. started
    end
    offset = '1'
  elseif not string.match(epoch, '^[0-9a-z]+$') or #epoch > 32 then
    refused = redis.error_reply('ERR publish.lua: ' .. meta .. ' holds a malformed epoch')
  elseif offset and (not string.match(offset, '^[0-9]+$') or #offset > 15) then
    refused = redis.error_reply('ERR publish.lua: ' .. meta .. ' holds a malformed offset')
  else
    offset = string.format('%d', (tonumber(offset) or 0) + 1)
  end

  -- A job's record: "ID\nSEQ\nENDED\nEVENT\nPAYLOAD" (SEQ '' when never given).
  -- A fresh history deletes the job keys, so only an existing one is read.
  local recorded_seq, stale, new_job, job_count = '', false, true, 0
  if job ~= '' and not fresh then
    local record = redis.pcall('HGET', jobs, job)
    if failed(record) then return record end
    job_count = redis.pcall('ZCARD', jobids)
    if failed(job_count) then return job_count end
    if record and not refused then
      local _, rseq, ended = string.match(record, '^([^\n]*)\n([^\n]*)\n([01])\n')
      recorded_seq, new_job = rseq or '', false
      stale = ended == '1' or (seq ~= '' and recorded_seq ~= ''
        and tonumber(recorded_seq) >= tonumber(seq))
    end
  end

  local id = not refused and epoch .. ':' .. offset
  if idem then
    if not refused then  -- the first write, OOM-checked: records this answer unless the key is used
      local first = redis.pcall('SET', idem, stale and '!stale' or id, 'NX', 'GET', 'EX', idem_ttl)
      if type(first) == 'string' then return '!dup:' .. first end
      refused = first  -- false when recorded; else WRONGTYPE or OOM, nothing written
    end
    if refused then  -- a used key answers first, as when it was checked before anything else
      local first = redis.pcall('GET', idem)
      if type(first) == 'string' then return '!dup:' .. first end
      if first then return wrongtype(idem, 'string') or first end
    end
  end
  if refused then return refused end
  if stale then return '!stale' end  -- a stale key answers stale again (recorded above)
  local entry = '0-' .. offset

  if fresh or maxlen == 0 then
    -- the first write (without a key), OOM-checked
    local set = redis.pcall('HSET', meta, 'epoch', epoch, 'offset', offset)
    if failed(set) then return set end
    redis.call('DEL', history)
    if fresh then redis.call('DEL', jobs, jobids) end
    if maxlen > 0 then
      redis.call('XADD', history, 'MAXLEN', maxlen, entry, 'e', event, 'd', payload)
    end
  else
    -- the first write (without a key), OOM-checked; refused (nothing written) when
    -- the stream is of another type or already holds this id or a later one
    -- (entries not written by this script)
    local added = redis.pcall('XADD', history, 'MAXLEN', maxlen, entry, 'e', event, 'd', payload)
    if failed(added) then
      if idem then redis.call('DEL', idem) end  -- the SET above is taken back
      return added
    end
    redis.call('HSET', meta, 'offset', offset)
  end
  redis.call('EXPIRE', meta, ttl)
  if maxlen > 0 then
    redis.call('EXPIRE', history, ttl)
  end

  if job ~= '' then
    local ended = (event == 'completion' or event == 'error') and '1' or '0'
    local new_seq = seq ~= '' and seq or recorded_seq
    redis.call('HSET', jobs, job, id .. '\n' .. new_seq .. '\n' .. ended .. '\n' .. event .. '\n' .. payload)
    redis.call('ZADD', jobids, tonumber(offset), job)
    local over = job_count + 1 - kept
    if new_job and over > 0 then  -- keep the most recently updated jobs
      local popped, gone = redis.call('ZPOPMIN', jobids, over), {}
      for i = 1, #popped, 2 do gone[#gone + 1] = popped[i] end  -- members (scores between)
      for i = 1, #gone, 1000 do  -- unpack takes about 8000 values at most: never fail here
        redis.call('HDEL', jobs, unpack(gone, i, math.min(i + 999, #gone)))
      end
    end
  end
  redis.call('EXPIRE', jobs, ttl)
  redis.call('EXPIRE', jobids, ttl)

  redis.call(command, channel, '\0gw1:' .. id .. '\0' .. payload)
  return id
end

local answers, k = {}, 1
for a = 7, #ARGV, 6 do
  local keyed = ARGV[a + 5] == '1'
  answers[#answers + 1] = publish(KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3],
    keyed and KEYS[k + 4] or nil, ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
  k = k + (keyed and 5 or 4)
end
return answers
