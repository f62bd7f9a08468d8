-- Durable publish: record the event in the merchant's history (and, for a job
-- event, its job state), then publish it, in one atomic step. Every durable
-- publisher runs this file (the gateway's HTTP API and CLI, the Python helper
-- gateway.durable.publisher, the Node snippet in docs/publishing.md).
--
-- KEYS[1]  history stream   gateway:history:{MERCHANT_ID}
-- KEYS[2]  meta hash        gateway:meta:{MERCHANT_ID}    (fields epoch, offset)
-- KEYS[3]  job state hash   gateway:jobs:{MERCHANT_ID}    (job -> its latest event)
-- KEYS[4]  job index zset   gateway:jobids:{MERCHANT_ID}  (job -> offset of that event)
-- KEYS[5]  (optional) idempotency key  gateway:idem:{MERCHANT_ID}:KEY
-- ARGV[1]  channel         e.g. merchant:MERCHANT_ID:progress
-- ARGV[2]  event name
-- ARGV[3]  payload
-- ARGV[4]  history length  (sse.history; 0 keeps no history)
-- ARGV[5]  ttl seconds     (redis.history_ttl; also the job state's)
-- ARGV[6]  epoch candidate (random, [0-9a-z]{1,32}; kept only when a history starts)
-- ARGV[7]  PUBLISH or SPUBLISH
-- ARGV[8]  job             (the payload's job key as text; '' for none)
-- ARGV[9]  seq             (decimal >= 0; '' for none)
-- ARGV[10] jobs kept       (sse.snapshot_jobs)
-- ARGV[11] idempotency ttl seconds (redis.idempotency_ttl)
-- Returns the event id "EPOCH:OFFSET" and publishes NUL "gw1:" ID NUL PAYLOAD;
-- "!stale" for a stale job event (nothing recorded or published); "!dup:" and the
-- first answer (an id or "!stale") when KEYS[5] was already used.
-- Refused (an error reply, nothing written or published): over maxmemory (OOM),
-- a key of another type (WRONGTYPE), a meta hash or stream not written by it (ERR).
-- A key already used answers "!dup:" before any of these but a wrong type of the
-- other keys, as when its check came first.
-- Deterministic (no TIME, no random): fit for replication and managed Redis.
-- Needs Redis >= 7.0 (SET with both NX and GET).

local history, meta, jobs, jobids, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local maxlen, ttl, command = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[7]
local job, seq, kept, idem_ttl = ARGV[8], ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
if command ~= 'PUBLISH' and command ~= 'SPUBLISH' then
  return redis.error_reply('ERR publish.lua: ARGV[7] must be PUBLISH or SPUBLISH')
end
if not maxlen or maxlen < 0 or not ttl or ttl < 1 then
  return redis.error_reply('ERR publish.lua: bad history length or ttl')
end
if not string.match(ARGV[6], '^[0-9a-z]+$') or #ARGV[6] > 32 then
  return redis.error_reply('ERR publish.lua: bad epoch candidate')
end
if #job > 128 or (seq ~= '' and (not string.match(seq, '^[0-9]+$') or #seq > 15))
    or not kept or kept < 1 or not idem_ttl or idem_ttl < 1 then
  return redis.error_reply('ERR publish.lua: bad job, seq, jobs kept or idempotency ttl')
end

-- Every check that can fail comes before the first write, so a refused publish
-- changes nothing: the meta hash's type and fields, the job keys' types (read
-- with pcall: a key of the wrong type answers WRONGTYPE), the stream's type and
-- last id (XADD's own checks, when it is the first write). And the first write
-- is a command Redis checks against maxmemory (HSET, XADD or SET, never DEL):
-- Redis checks a flagless script for OOM only until its first write, so over
-- maxmemory the script is refused before it writes anything.
-- With an idempotency key that first write is one SET ... NX GET: it checks the
-- key and records this publish's answer (its id, or "!stale") at once. One check
-- comes after it, XADD's own on the stream's type and last id: when XADD refuses,
-- the key is deleted again (it did not exist before: NX), so nothing is left.
-- The calls are few on purpose: each one costs Redis about a microsecond.
local function wrongtype(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('WRONGTYPE publish.lua: ' .. key .. ' is a ' .. kind .. ', not a ' .. want)
  end
end

local read = redis.pcall('HMGET', meta, 'epoch', 'offset')
if read['err'] then return read end
local epoch, offset = read[1], read[2]
local fresh, refused = not epoch, nil
if fresh then
  epoch, offset = ARGV[6], '1'  -- a new history: whatever an earlier one left is not part of it
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
  if type(record) == 'table' and record['err'] then return record end
  job_count = redis.pcall('ZCARD', jobids)
  if type(job_count) == 'table' then return job_count end
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
  redis.call('HSET', meta, 'epoch', epoch, 'offset', offset)  -- first write (without a key)
  redis.call('DEL', history)
  if fresh then redis.call('DEL', jobs, jobids) end
  if maxlen > 0 then
    redis.call('XADD', history, 'MAXLEN', maxlen, entry, 'e', ARGV[2], 'd', ARGV[3])
  end
else
  -- first write (without a key), OOM-checked; refused (nothing written) when the
  -- stream is of another type or already holds this id or a later one (entries
  -- not written by this script)
  local xadd = idem and redis.pcall or redis.call
  local added = xadd('XADD', history, 'MAXLEN', maxlen, entry, 'e', ARGV[2], 'd', ARGV[3])
  if type(added) == 'table' and added['err'] then  -- refused, with a key: the SET above is taken back
    redis.call('DEL', idem)
    return added
  end
  redis.call('HSET', meta, 'offset', offset)
end
redis.call('EXPIRE', meta, ttl)
if maxlen > 0 then
  redis.call('EXPIRE', history, ttl)
end

if job ~= '' then
  local ended = (ARGV[2] == 'completion' or ARGV[2] == 'error') and '1' or '0'
  local new_seq = seq ~= '' and seq or recorded_seq
  redis.call('HSET', jobs, job, id .. '\n' .. new_seq .. '\n' .. ended .. '\n' .. ARGV[2] .. '\n' .. ARGV[3])
  redis.call('ZADD', jobids, tonumber(offset), job)
  local over = job_count + 1 - kept
  if new_job and over > 0 then  -- keep the most recently updated jobs
    local popped, gone = redis.call('ZPOPMIN', jobids, over), {}
    for i = 1, #popped, 2 do gone[#gone + 1] = popped[i] end  -- members (scores between)
    redis.call('HDEL', jobs, unpack(gone))
  end
end
redis.call('EXPIRE', jobs, ttl)
redis.call('EXPIRE', jobids, ttl)

redis.call(command, ARGV[1], '\0gw1:' .. id .. '\0' .. ARGV[3])
return id
