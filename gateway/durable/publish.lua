-- Durable publish: record the event in the merchant's history, then publish it,
-- in one atomic step. Every durable publisher runs this file (the gateway's HTTP
-- API and CLI, gateway/publisher.py, the Node snippet in docs/publishing.md).
--
-- KEYS[1]  history stream  gateway:history:{MERCHANT_ID}
-- KEYS[2]  meta hash       gateway:meta:{MERCHANT_ID}   (fields epoch, offset)
-- ARGV[1]  channel         e.g. merchant:MERCHANT_ID:progress
-- ARGV[2]  event name
-- ARGV[3]  payload
-- ARGV[4]  history length  (sse.history; 0 keeps no history)
-- ARGV[5]  ttl seconds     (redis.history_ttl)
-- ARGV[6]  epoch candidate (random, [0-9a-z]{1,32}; kept only when a history starts)
-- ARGV[7]  PUBLISH or SPUBLISH
-- Returns the event id "EPOCH:OFFSET" and publishes NUL "gw1:" ID NUL PAYLOAD.
-- Refused (an error reply, nothing written or published): over maxmemory (OOM),
-- a key of another type (WRONGTYPE), a meta hash or stream not written by it (ERR).
-- Deterministic (no TIME, no random): fit for replication and managed Redis.

local history, meta = KEYS[1], KEYS[2]
local maxlen, ttl, command = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[7]
if command ~= 'PUBLISH' and command ~= 'SPUBLISH' then
  return redis.error_reply('ERR publish.lua: ARGV[7] must be PUBLISH or SPUBLISH')
end
if not maxlen or maxlen < 0 or not ttl or ttl < 1 then
  return redis.error_reply('ERR publish.lua: bad history length or ttl')
end
if not string.match(ARGV[6], '^[0-9a-z]+$') or #ARGV[6] > 32 then
  return redis.error_reply('ERR publish.lua: bad epoch candidate')
end

-- Every check that can fail comes before the first write, so a refused publish
-- changes nothing: key types, the meta hash's fields, the stream's last id. And
-- the first write is a command Redis checks against maxmemory (HSET or XADD,
-- never DEL): Redis checks a flagless script for OOM only until its first
-- write, so over maxmemory the script is refused before it writes anything.
local function wrongtype(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('WRONGTYPE publish.lua: ' .. key .. ' is a ' .. kind .. ', not a ' .. want)
  end
end
local refused = wrongtype(meta, 'hash') or wrongtype(history, 'stream')
if refused then return refused end

local epoch, offset = unpack(redis.call('HMGET', meta, 'epoch', 'offset'))
local fresh = not epoch
if fresh then
  epoch, offset = ARGV[6], '1'  -- a new history: whatever an earlier one left is not part of it
else
  if not string.match(epoch, '^[0-9a-z]+$') or #epoch > 32 then
    return redis.error_reply('ERR publish.lua: ' .. meta .. ' holds a malformed epoch')
  end
  if offset and (not string.match(offset, '^[0-9]+$') or #offset > 15) then
    return redis.error_reply('ERR publish.lua: ' .. meta .. ' holds a malformed offset')
  end
  offset = string.format('%d', (tonumber(offset) or 0) + 1)
end
local entry = '0-' .. offset

if fresh or maxlen == 0 then
  redis.call('HSET', meta, 'epoch', epoch, 'offset', offset)  -- first write: OOM-checked
  redis.call('DEL', history)
  if maxlen > 0 then
    redis.call('XADD', history, 'MAXLEN', maxlen, entry, 'e', ARGV[2], 'd', ARGV[3])
  end
else
  -- first write, OOM-checked; refused (nothing written) when the stream already
  -- holds this id or a later one (entries not written by this script)
  redis.call('XADD', history, 'MAXLEN', maxlen, entry, 'e', ARGV[2], 'd', ARGV[3])
  redis.call('HSET', meta, 'offset', offset)
end
redis.call('EXPIRE', meta, ttl)
if maxlen > 0 then
  redis.call('EXPIRE', history, ttl)
end

local id = epoch .. ':' .. offset
redis.call(command, ARGV[1], '\0gw1:' .. id .. '\0' .. ARGV[3])
return id
