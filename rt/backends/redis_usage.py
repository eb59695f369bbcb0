"""Models in use in cluster mode, in Redis (`UsageRegistry` shared by every node).

Models in use expire `ttl` seconds after their last touch, like the memory registry, but
cluster-wide (tag `usage`, one slot, every change one Lua script):

    P:{usage}:entries    zset  "<sid>\\0<model>" -> last touch (wall clock of the node)
    P:{usage}:by-sid     zset  same members, score 0 (lexical index: a sid's models)
    P:{usage}:models     hash  model -> number of entries
    P:{usage}:version    string  bumped by every change of the set of models

An entry's own time is its lease: the sessions of a dead node stop touching, so their
entries expire within the usage ttl through any node's `expire()` sweep, and at once
when the surviving node that reaps them calls `drop_sid()` for each dead sid. Times are
wall-clock seconds (`RedisUsage.clock = time.time`): an entry written by one node is
expired by another node's sweep, and the wall clock is the only clock they share. The
caps (models per session, models in all) are checked inside the touch script, so nodes
touching at once cannot pass them together. A sweep that cannot find anything old enough
(the oldest entry's time is known from the last one) does not ask Redis.
"""
from __future__ import annotations

import math
import time

from ..core.errors import UsageFull
from .redis_conn import AnyRedis, KeySpace
from .redis_ops import Lua, RedisUser, text

EXPIRE_BATCH = 1000

# KEYS: entries, by-sid, models, version; ARGV: sid, model, now, max per sid, max models
# (0 = no cap). Returns 1 (the set changed), 0 (it did not), -1 / -2 (refused: the sid
# holds its maximum / the set does).
U_TOUCH = Lua("""
local m = ARGV[1] .. '\\0' .. ARGV[2]
if redis.call('ZSCORE', KEYS[1], m) then
  redis.call('ZADD', KEYS[1], ARGV[3], m)
  return 0
end
local per_sid, total = tonumber(ARGV[4]), tonumber(ARGV[5])
if per_sid > 0 and redis.call('ZLEXCOUNT', KEYS[2], '[' .. ARGV[1] .. '\\0',
                                  '(' .. ARGV[1] .. '\\1') >= per_sid then
  return -1
end
local new_model = redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0
if new_model and total > 0 and redis.call('HLEN', KEYS[3]) >= total then return -2 end
redis.call('ZADD', KEYS[1], ARGV[3], m)
redis.call('ZADD', KEYS[2], 0, m)
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
if new_model then
  redis.call('INCR', KEYS[4])
  return 1
end
return 0
""")

_U_FORGET = """
local changed = 0
local function forget(m, sidlen)
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZREM', KEYS[2], m)
  local model = string.sub(m, sidlen + 2)
  if redis.call('HINCRBY', KEYS[3], model, -1) <= 0 then
    redis.call('HDEL', KEYS[3], model)
    changed = 1
  end
end
"""

# KEYS: entries, by-sid, models, version; ARGV: sid
U_DROP = Lua(_U_FORGET + """
local sid = ARGV[1]
for _, m in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], '[' .. sid .. '\\0', '(' .. sid .. '\\1')) do
  forget(m, string.len(sid))
end
if changed == 1 then redis.call('INCR', KEYS[4]) end
return changed
""")

# KEYS: entries, by-sid, models, version; ARGV: older_than, limit. Returns {changed,
# expired, the time of the oldest entry left (a string: Lua numbers lose the fraction;
# '' when none is left)}.
U_EXPIRE = Lua(_U_FORGET + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1],
                        'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(gone) do
  forget(m, string.find(m, '\\0', 1, true) - 1)
end
if changed == 1 then redis.call('INCR', KEYS[4]) end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {changed, #gone, oldest[2] or ''}
""")

# KEYS: version, models. The version and the set, read together.
U_SNAPSHOT = Lua("""
return {redis.call('GET', KEYS[1]) or '0', redis.call('HKEYS', KEYS[2])}
""")


class RedisUsage(RedisUser):
    """`UsageRegistry` shared by every node (see the module docstring)."""

    # Shared by nodes: the wall clock, the one clock they have in common (see
    # UsageRegistry.clock). A step of one node's clock shifts its entries' expiry.
    clock = staticmethod(time.time)
    shared = True

    def __init__(self, client: AnyRedis, keys: KeySpace, *, where: str = "Redis") -> None:
        super().__init__(client, keys, where)
        self._keys = [keys.key("usage", "entries"), keys.key("usage", "by-sid"),
                      keys.key("usage", "models"), keys.key("usage", "version")]
        # No entry is older than this (see `expire`): until the sweep's bound passes it,
        # there is nothing to expire and nothing to ask Redis.
        self._none_before = -math.inf

    @staticmethod
    def _check(sid: str) -> str:
        if "\0" in sid:
            raise ValueError("a session id cannot contain NUL")
        return sid

    async def touch(self, model: str, sid: str, now: float, max_per_sid: int | None = None,
                    max_models: int | None = None) -> bool:
        args = [self._check(sid), model, repr(float(now)), max_per_sid or 0, max_models or 0]
        self._none_before = min(self._none_before, float(now))
        got = await self._lua(U_TOUCH, self._keys, args)
        if got == -1:
            raise UsageFull("connection")
        if got == -2:
            raise UsageFull("total")
        return bool(got == 1)

    async def drop_sid(self, sid: str) -> bool:
        return bool(await self._lua(U_DROP, self._keys, [self._check(sid)]) == 1)

    async def expire(self, older_than: float) -> bool:
        """Every node sweeps every second or so; most sweeps find nothing old enough. The
        script answers the time of the oldest entry it left, and no entry is written with
        an earlier time later (touches carry the writer's now; this node's own touches
        lower the bound), so the sweeps before that time are answered here. An entry of a
        node whose clock is behind may wait for that node's own sweep."""
        if older_than <= self._none_before:
            return False
        asked_at = self.clock()
        changed = False
        while True:
            flag, count, oldest = await self._lua(U_EXPIRE, self._keys,
                                                  [repr(float(older_than)), EXPIRE_BATCH])
            changed = changed or flag == 1
            if count < EXPIRE_BATCH:
                left = float(oldest) if oldest not in (b"", "", None) else math.inf
                # a touch racing this sweep carries a time after `asked_at` (less a
                # round trip: it is expired that much late, or by its own node's sweep)
                self._none_before = min(left, asked_at)
                return changed

    async def models(self) -> list[str]:
        return sorted(text(m) for m in await self._run(lambda c: c.hkeys(self._keys[2])))

    async def snapshot(self) -> tuple[int, list[str]]:
        version, models = await self._lua(U_SNAPSHOT, [self._keys[3], self._keys[2]])
        return int(version), sorted(text(m) for m in models)

    async def version(self) -> int:
        return int(await self._run(lambda c: c.get(self._keys[3])) or 0)
