"""The Lua scripts of the Redis store (redis_store.py): every change that touches more than
one key runs as one script, atomic on the server, its keys in one Cluster slot. The key
layout they work on is described in redis_store.py; each script names its KEYS and ARGV.
"""
from __future__ import annotations

from .redis_ops import Lua

# --- directory ----------------------------------------------------------------------------

PUT_USER = Lua("""
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'role', ARGV[2], 'disabled', ARGV[3])
if ARGV[4] ~= '' then
  local cur = redis.call('HGET', KEYS[1], 'last_active')
  if not cur or tonumber(cur) < tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[1], 'last_active', ARGV[4])
  end
end
return 1
""")

SET_LAST_ACTIVE = Lua("""
for i, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 1 then
    local cur = redis.call('HGET', k, 'last_active')
    if not cur or tonumber(cur) < tonumber(ARGV[i]) then
      redis.call('HSET', k, 'last_active', ARGV[i])
    end
  end
end
return 1
""")

# KEYS: user, user-channels, members:<cid> ...; ARGV: uid, n, cid ... (as read by the client)
DELETE_USER = Lua("""
local n = tonumber(ARGV[2])
if redis.call('SCARD', KEYS[2]) ~= n then return -1 end
for i = 1, n do
  if redis.call('SISMEMBER', KEYS[2], ARGV[2 + i]) == 0 then return -1 end
end
for i = 1, n do redis.call('HDEL', KEYS[2 + i], ARGV[1]) end
redis.call('DEL', KEYS[2])
return redis.call('DEL', KEYS[1])
""")

# Checks that the members hash (KEYS[2]) still holds exactly ARGV[2]=k users ARGV[3..2+k].
_SAME_MEMBERS = """
local k = tonumber(ARGV[2])
if redis.call('HLEN', KEYS[2]) ~= k then return -1 end
for i = 1, k do
  if redis.call('HEXISTS', KEYS[2], ARGV[2 + i]) == 0 then return -1 end
end
"""

# KEYS: channels, members, user-channels:<u> ...; ARGV: cid, k, current ..., then per user
# of KEYS[3..] a pair (uid, '1' keep/add | '0' remove).
PUT_CHANNEL = Lua(_SAME_MEMBERS + """
redis.call('SADD', KEYS[1], ARGV[1])
local base = 2 + k
for i = 3, #KEYS do
  local uid = ARGV[base + 2 * (i - 3) + 1]
  if ARGV[base + 2 * (i - 3) + 2] == '1' then
    redis.call('HSETNX', KEYS[2], uid, '')
    redis.call('SADD', KEYS[i], ARGV[1])
  else
    redis.call('HDEL', KEYS[2], uid)
    redis.call('SREM', KEYS[i], ARGV[1])
  end
end
return 1
""")

# KEYS: channels, members, user-channels:<u> ...; ARGV: cid, then per KEYS[3..] (uid, a|r).
UPDATE_MEMBERS = Lua("""
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 3, #KEYS do
  local uid, op = ARGV[2 * (i - 3) + 2], ARGV[2 * (i - 3) + 3]
  if op == 'a' then
    redis.call('HSETNX', KEYS[2], uid, '')
    redis.call('SADD', KEYS[i], ARGV[1])
  else
    redis.call('HDEL', KEYS[2], uid)
    redis.call('SREM', KEYS[i], ARGV[1])
  end
end
return 1
""")

# KEYS: channels, members, user-channels:<u> for the k current members; ARGV: cid, k, uids.
DELETE_CHANNEL = Lua(_SAME_MEMBERS + """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 1, k do redis.call('SREM', KEYS[2 + i], ARGV[1]) end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
""")

GET_MEMBERS = Lua("""
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('HKEYS', KEYS[2])
""")

SET_CHANNEL_READ = Lua("""
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
""")

# KEYS: chat-reads:<uid>; ARGV: chat id, time, keep (0 = unbounded). A chat the user had
# no marker for makes one more: beyond `keep`, the oldest others go (by time, ties by chat
# id: the sorted set's own order), never the one just set. Returns how many went.
SET_CHAT_READ = Lua("""
if redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end
local keep = tonumber(ARGV[3])
if keep <= 0 then return 0 end
local extra = redis.call('ZCARD', KEYS[1]) - keep
if extra <= 0 then return 0 end
local r = redis.call('ZRANK', KEYS[1], ARGV[1])
if r >= extra then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1)
else
  -- the new marker is among the oldest: drop the `extra` oldest around it
  redis.call('ZREMRANGEBYRANK', KEYS[1], r + 1, extra)
  if r > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, r - 1) end
end
return extra
""")

# --- documents ----------------------------------------------------------------------------
# KEYS: meta, log, stats; ARGV: update, now, only_first ('1': append only if the document
# never had an update, else answer 0 and change nothing)
APPEND = Lua("""
if ARGV[3] == '1' and tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '0') > 0 then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'base', 0, 'bytes', 0)
  redis.call('HINCRBY', KEYS[3], 'count', 1)
end
local seq = redis.call('HINCRBY', KEYS[1], 'last_seq', 1)
redis.call('RPUSH', KEYS[2], ARGV[1])
local n = string.len(ARGV[1])
redis.call('HINCRBY', KEYS[1], 'bytes', n)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'bytes', n)
return seq
""")

# KEYS: meta, log, snap
LOAD = Lua("""
local m = redis.call('HMGET', KEYS[1], 'last_seq', 'updated_at', 'content')
if not m[2] then return false end
return {m, redis.call('GET', KEYS[3]), redis.call('LRANGE', KEYS[2], 0, -1)}
""")

# KEYS: meta, log; ARGV: after_seq. The log holds the seqs after `base`.
TAIL = Lua("""
local m = redis.call('HMGET', KEYS[1], 'last_seq', 'updated_at', 'content', 'base', 'bytes')
if not m[2] then return false end
local count = redis.call('LLEN', KEYS[2])
local skip = tonumber(ARGV[1]) - tonumber(m[4] or '0')
if skip < 0 then return {m, count, false} end
return {m, count, redis.call('LRANGE', KEYS[2], skip, -1)}
""")

# KEYS: meta, log, snap, stats; ARGV: upto_seq, snapshot
COMPACT = Lua("""
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local base = tonumber(redis.call('HGET', KEYS[1], 'base') or '0')
local drop = tonumber(ARGV[1]) - base
local len = redis.call('LLEN', KEYS[2])
if drop > len then drop = len end
local freed = 0
if drop > 0 then
  for _, u in ipairs(redis.call('LRANGE', KEYS[2], 0, drop - 1)) do
    freed = freed + string.len(u)
  end
  redis.call('LTRIM', KEYS[2], drop, -1)
  redis.call('HSET', KEYS[1], 'base', base + drop)
else
  drop = 0
end
local delta = string.len(ARGV[2]) - redis.call('STRLEN', KEYS[3]) - freed
redis.call('SET', KEYS[3], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'bytes', delta)
redis.call('HINCRBY', KEYS[4], 'bytes', delta)
return drop
""")

# KEYS: meta, stats; ARGV: content, now
SET_CONTENT = Lua("""
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'last_seq', 0, 'base', 0, 'bytes', 0)
  redis.call('HINCRBY', KEYS[2], 'count', 1)
end
redis.call('HSET', KEYS[1], 'content', ARGV[1], 'updated_at', ARGV[2])
return 1
""")

# KEYS: meta, log, snap, stats
DELETE_DOC = Lua("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local b = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HINCRBY', KEYS[4], 'count', -1)
redis.call('HINCRBY', KEYS[4], 'bytes', -b)
return 1
""")
