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

local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- a new history: whatever an earlier one left behind is not part of it
  epoch = ARGV[6]
  redis.call('DEL', history)
  redis.call('HSET', meta, 'epoch', epoch)
end
redis.call('HINCRBY', meta, 'offset', 1)
local offset = redis.call('HGET', meta, 'offset') -- the exact decimal text
redis.call('EXPIRE', meta, ttl)

if maxlen > 0 then
  redis.call('XADD', history, 'MAXLEN', maxlen, '0-' .. offset, 'e', ARGV[2], 'd', ARGV[3])
  redis.call('EXPIRE', history, ttl)
else
  redis.call('DEL', history)
end

local id = epoch .. ':' .. offset
redis.call(command, ARGV[1], '\0gw1:' .. id .. '\0' .. ARGV[3])
return id
