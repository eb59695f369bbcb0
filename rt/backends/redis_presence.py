"""Live sessions of cluster mode in Redis (`PresenceRegistry` shared by every node).

Every entry carries the id of the node that holds the session, and each node holds a
lease (`node_ttl` seconds) that its `heartbeat()` renews every `node_ttl / 3` seconds.
Layout, one slot (tag `presence`) so that every change is one atomic Lua script:

    P:{presence}:nodes           zset  node id -> lease deadline (ms, Redis server clock)
    P:{presence}:sids            hash  sid -> "<node id>\\n<user id>"   (user_of, any sid)
    P:{presence}:node:<node>     hash  sid -> user id        (a node's sessions, for reaping)
    P:{presence}:counts:<node>   hash  user id -> sessions   (users(), per node)
    P:{presence}:user:<uid>      hash  sid -> node id        (sessions_of)

Reads ignore the entries of a node whose lease has passed, so a node that died stops
counting within `node_ttl` of its last heartbeat even if nobody cleans up. Any live node
then reaps the dead node's entries with `dead_sessions()`: each dead sid is removed (and
returned) by exactly one node, which tells the clients like a normal leave. A node that
was merely slow (paused, partitioned) re-asserts its own sessions at its next heartbeat,
as it does after Redis lost data (restart without persistence, failover).

Finding the dead costs nothing beyond the beats: the script that renews a node's lease
also answers which leases have passed and when the next one of another node ends. A node
looks again at that moment (`dead_sessions()`, called often, asks Redis only then), so a
node that died is found within `node_ttl` plus the caller's interval, whatever the beat
interval; while every node beats, nobody asks between beats. (A node that joined since
this node's last beat is known from the next one on: with one `node_ttl` on every node,
that beat comes before the newcomer's first lease ends.) After this node itself could
not reach Redis, the others probably could not either: their leases get one more beat
before they are judged.

Deadlines come from Redis's clock (TIME inside the scripts), never from the nodes' clocks.
Nothing here scans: every read goes through a hash or set of the thing asked about.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

from ..core.errors import StoreError
from .redis_conn import AnyRedis, KeySpace
from .redis_ops import Lua, RedisUser, text

log = logging.getLogger("rt.backend")
T = TypeVar("T")

REAP_BATCH = 500  # sessions per reaping script (bounds the time one script holds Redis)
RESYNC_PARALLEL = 32
# Seconds a node's lease lasts unless `[state] node_ttl` says otherwise: a node that died is
# found within about as long.
NODE_TTL = 12.0
# Beats per lease: a node survives two missed beats (a stall of 2/3 of `node_ttl`).
BEATS_PER_LEASE = 3
# A lease seen to end is looked at this long after its deadline (Redis's clock and this
# node's timer are read a round trip apart).
DEADLINE_MARGIN = 0.05

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Liveness of node `n` at `now`, cached per script run in `alive`.
_ALIVE = """
local alive = {}
local function is_alive(n)
  local ok = alive[n]
  if ok == nil then
    local d = redis.call('ZSCORE', KEYS[1], n)
    ok = (d and tonumber(d) >= now) and true or false
    alive[n] = ok
  end
  return ok
end
"""

# KEYS: nodes, sids, node:<me>, counts:<me>, user:<uid>; ARGV: sid, uid, me, ttl_ms
# Returns 1 (registered, or already so) or the conflicting "<node>\n<uid>" entry.
P_ADD = Lua(_NOW + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[3])
local val = ARGV[3] .. '\\n' .. ARGV[2]
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur then
  if cur == val then return 1 end
  return cur
end
redis.call('HSET', KEYS[2], ARGV[1], val)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
return 1
""")

# KEYS: sids, node:<n>, counts:<n>, user:<uid>; ARGV: sid, expected "<n>\n<uid>", uid, n
P_REMOVE = Lua("""
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HINCRBY', KEYS[3], ARGV[3], -1) <= 0 then redis.call('HDEL', KEYS[3], ARGV[3]) end
if redis.call('HGET', KEYS[4], ARGV[1]) == ARGV[4] then redis.call('HDEL', KEYS[4], ARGV[1]) end
return 1
""")

# KEYS: nodes, user:<uid>
P_SESSIONS_OF = Lua(_NOW + _ALIVE + """
local all = redis.call('HGETALL', KEYS[2])
local out = {}
for i = 1, #all, 2 do
  if is_alive(all[i + 1]) then out[#out + 1] = all[i] end
end
return out
""")

# KEYS: nodes, sids; ARGV: sid
P_USER_OF = Lua(_NOW + _ALIVE + """
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v then return false end
local i = string.find(v, '\\n', 1, true)
if not is_alive(string.sub(v, 1, i - 1)) then return false end
return string.sub(v, i + 1)
""")

# KEYS: nodes; ARGV: '1' live nodes | '0' dead nodes (lease passed), me (never dead to me)
P_NODES = Lua(_NOW + """
if ARGV[1] == '1' then return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf') end
local out = {}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)) do
  if n ~= ARGV[2] then out[#out + 1] = n end
end
return out
""")

# KEYS: nodes, node:<me>; ARGV: me, ttl_ms. Renews this node's lease and looks at the
# others' in the same call (the one command a node sends per beat): returns {how many
# sessions Redis holds for this node (the node compares with its own count), the nodes
# whose lease has passed, ms until the next lease of another node ends (-1: none)}. The
# two earliest leases are read first; the full scans only run when one has passed.
P_BEAT = Lua(_NOW + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local held = redis.call('HLEN', KEYS[2])
local dead, next_ms = {}, -1
local first = redis.call('ZRANGE', KEYS[1], 0, 1, 'WITHSCORES')
for i = 1, #first, 2 do
  if first[i] ~= ARGV[1] then
    if tonumber(first[i + 1]) >= now then
      next_ms = tonumber(first[i + 1]) - now
    else
      for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)) do
        if n ~= ARGV[1] then dead[#dead + 1] = n end
      end
      local live = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'WITHSCORES', 'LIMIT', 0, 2)
      for j = 1, #live, 2 do
        if live[j] ~= ARGV[1] then next_ms = tonumber(live[j + 1]) - now; break end
      end
    end
    break
  end
end
return {held, dead, next_ms}
""")

# KEYS: nodes, sids, node:<d>, counts:<d>, user:<u1>, user:<u2> ...
# ARGV: d, force ('1': reap even if alive, for a node retiring itself), then pairs
# (sid, index into KEYS of its user key). Removes the listed sessions that still belong
# to d and returns them; forgets d once it holds none. -1 when d came back to life.
P_REAP = Lua(_NOW + """
local d = ARGV[1]
local dl = redis.call('ZSCORE', KEYS[1], d)
if ARGV[2] ~= '1' and dl and tonumber(dl) >= now then return -1 end
local out = {}
for i = 3, #ARGV, 2 do
  local sid = ARGV[i]
  local uk = KEYS[tonumber(ARGV[i + 1])]
  local uid = redis.call('HGET', KEYS[3], sid)
  if uid then
    redis.call('HDEL', KEYS[3], sid)
    if redis.call('HGET', KEYS[2], sid) == d .. '\\n' .. uid then
      redis.call('HDEL', KEYS[2], sid)
    end
    if redis.call('HGET', uk, sid) == d then redis.call('HDEL', uk, sid) end
    if redis.call('HINCRBY', KEYS[4], uid, -1) <= 0 then redis.call('HDEL', KEYS[4], uid) end
    out[#out + 1] = sid
  end
end
if redis.call('HLEN', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[4])
  redis.call('ZREM', KEYS[1], d)
end
return out
""")


class RedisPresence(RedisUser):
    """`PresenceRegistry` shared by every node. The app must call `heartbeat()` every
    `heartbeat_interval` seconds and `dead_sessions()` every second or so (see the
    module docstring); `retire()` at a graceful stop."""

    def __init__(self, client: AnyRedis, keys: KeySpace, *, node_id: str | None = None,
                 node_ttl: float = NODE_TTL, where: str = "Redis") -> None:
        super().__init__(client, keys, where)
        if node_ttl <= 0:
            raise ValueError("node_ttl must be > 0")
        self.node_id = node_id or new_node_id()
        if "\n" in self.node_id or not self.node_id:
            raise ValueError("node id must be non-empty, without newline")
        self.node_ttl = node_ttl
        # This node's own sessions: the truth the heartbeat re-asserts after Redis lost
        # them, and the entries a failed remove still has to clear.
        self._local: dict[str, str] = {}
        self._unremoved: dict[str, str] = {}
        self._resync_lock = asyncio.Lock()
        # What the last beat saw: nodes whose lease had passed (to reap), and when (on
        # time.monotonic) the earliest other lease ends; never beaten yet: look at once.
        self._dead: list[str] = []
        self._look_at = 0.0
        # the last beat failed: Redis may have been away for every node
        self._cut_off = False

    @property
    def heartbeat_interval(self) -> float:
        """How often `heartbeat()` should run: a few beats fit in one lease."""
        return self.node_ttl / BEATS_PER_LEASE

    def _k(self, *parts: str) -> str:
        return self.keys.key("presence", *parts)

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.node_ttl * 1000))

    # ------------------------------------------------------------------ registry
    async def add(self, sid: str, user_id: str) -> None:
        self._unremoved.pop(sid, None)
        self._local[sid] = user_id
        try:
            await self._add(sid, user_id)
        except BaseException:
            # not registered: the caller refuses the session (a stray entry that did reach
            # Redis is cleared by the next heartbeat)
            if self._local.get(sid) == user_id:
                del self._local[sid]
            raise

    async def _add(self, sid: str, user_id: str) -> None:
        me = self.node_id
        for _ in range(3):
            got = await self._lua(
                P_ADD,
                [self._k("nodes"), self._k("sids"), self._k("node", me), self._k("counts", me),
                 self._k("user", user_id)],
                [sid, user_id, me, self._ttl_ms])
            if got == 1:
                return
            # The sid is registered otherwise (another user, or another node): replace.
            node, _, old_user = text(got).partition("\n")
            await self._remove_entry(sid, node, old_user)
        raise StoreError(f"{self.where}: presence add {sid!r} kept conflicting")

    async def _remove_entry(self, sid: str, node: str, user_id: str) -> bool:
        removed = await self._lua(
            P_REMOVE,
            [self._k("sids"), self._k("node", node), self._k("counts", node),
             self._k("user", user_id)],
            [sid, f"{node}\n{user_id}", user_id, node])
        return bool(removed == 1)

    async def remove(self, sid: str) -> str | None:
        """Forget a session. For a session of this node it never fails: while Redis is
        unreachable the entry is left for the next heartbeat to clear (a disconnect must
        go through whatever Redis does)."""
        user_id = self._local.pop(sid, None)
        if user_id is not None:
            try:
                if await self._remove_entry(sid, self.node_id, user_id):
                    return user_id
            except StoreError as exc:
                self._unremoved[sid] = user_id
                log.warning("presence: %s; session %s is cleared at the next heartbeat",
                            exc, sid)
                return user_id
        # Not ours (or not as we knew it): whatever Redis holds for it.
        entry = await self._run(lambda c: c.hget(self._k("sids"), sid))
        if entry is None:
            return user_id
        node, _, other = text(entry).partition("\n")
        await self._remove_entry(sid, node, other)
        return other

    async def sessions_of(self, user_id: str) -> list[str]:
        got = await self._lua(P_SESSIONS_OF, [self._k("nodes"), self._k("user", user_id)])
        return [text(s) for s in got]

    async def user_of(self, sid: str) -> str | None:
        got = await self._lua(P_USER_OF, [self._k("nodes"), self._k("sids")], [sid])
        return None if got is None else text(got)

    async def nodes(self) -> list[str]:
        """Ids of the nodes whose lease is current (the live cluster)."""
        return sorted(text(n) for n in await self._lua(P_NODES, [self._k("nodes")], ["1", ""]))

    async def users(self) -> dict[str, int]:
        nodes = await self.nodes()

        async def read(c: AnyRedis) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            for n in nodes:
                pipe.hgetall(self._k("counts", n))
            return await pipe.execute()

        out: dict[str, int] = {}
        for counts in (await self._run(read) if nodes else []):
            for uid, count in counts.items():
                if int(count) > 0:
                    out[text(uid)] = out.get(text(uid), 0) + int(count)
        return out

    # ------------------------------------------------------------------ node lifecycle
    async def heartbeat(self) -> None:
        """Renew this node's lease; re-assert its sessions when Redis lost them (restart,
        failover) or when this node was taken for dead; clear removes that failed. Learns
        which other nodes' leases have passed (reaped by `dead_sessions()`) and when the
        next one ends."""
        try:
            for sid, user_id in list(self._unremoved.items()):
                if sid not in self._local:
                    await self._remove_entry(sid, self.node_id, user_id)
                self._unremoved.pop(sid, None)
            held, dead, next_ms = await self._lua(
                P_BEAT, [self._k("nodes"), self._k("node", self.node_id)],
                [self.node_id, self._ttl_ms])
        except StoreError:
            self._cut_off = True
            raise
        now = time.monotonic()
        if self._cut_off:
            # Redis is back for us, so probably for the others too: their next beat may
            # still be on its way. Judge them one beat from now.
            self._cut_off = False
            self._dead, self._look_at = [], now + self.heartbeat_interval
        else:
            self._dead = [text(n) for n in dead]
            self._look_at = (now + int(next_ms) / 1000 + DEADLINE_MARGIN if int(next_ms) >= 0
                             else math.inf)
        if held != len(self._local):
            await self._resync()

    async def _resync(self) -> None:
        async with self._resync_lock:
            raw = await self._run(lambda c: c.hgetall(self._k("node", self.node_id)))
            held = {text(k): text(v) for k, v in raw.items()}
            local = dict(self._local)
            missing = [(s, u) for s, u in local.items() if held.get(s) != u]
            extra = [(s, u) for s, u in held.items() if s not in local]
            if missing or extra:
                log.warning("presence: re-registering %d session(s) and clearing %d stale "
                            "one(s) of node %s in Redis", len(missing), len(extra), self.node_id)
            for batch in _chunks(extra, RESYNC_PARALLEL):
                await asyncio.gather(*(self._remove_entry(s, self.node_id, u) for s, u in batch))
            for batch in _chunks(missing, RESYNC_PARALLEL):
                await asyncio.gather(*(self._add(s, u) for s, u in batch))

    async def dead_sessions(self) -> list[tuple[str, str]]:
        """Reap the sessions of nodes whose lease has passed: returns (sid, user id) for
        each session removed. Every dead session is returned to exactly one caller in the
        cluster, which should announce it like a normal disconnect. Asks Redis only when
        the last beat saw a lease pass, or when the earliest lease it saw ends (then with
        a beat of its own): cheap to call every second."""
        if not self._dead and time.monotonic() >= self._look_at:
            await self.heartbeat()
        dead, self._dead = self._dead, []
        out: list[tuple[str, str]] = []
        for i, node in enumerate(dead):
            try:
                got = await self._reap(node, force=False)
            except BaseException:
                self._dead = dead[i:] + self._dead  # still to do (the next beat knows too)
                raise
            if got:
                log.info("presence: node %s stopped (lease passed); %d session(s) gone",
                         node, len(got))
            out += got
        return out

    async def retire(self) -> list[tuple[str, str]]:
        """Graceful stop: forget this node and whatever sessions Redis still holds for it
        (returned; they normally left one by one already)."""
        self._local.clear()
        self._unremoved.clear()
        return await self._reap(self.node_id, force=True)

    async def _reap(self, node: str, *, force: bool) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        while True:
            raw = await self._run(lambda c: c.hgetall(self._k("node", node)))
            entries = sorted((text(k), text(v)) for k, v in raw.items())[:REAP_BATCH]
            users = sorted({u for _, u in entries})
            index = {u: 5 + i for i, u in enumerate(users)}  # 1-based position in KEYS
            keys = [self._k("nodes"), self._k("sids"), self._k("node", node),
                    self._k("counts", node), *(self._k("user", u) for u in users)]
            args: list[Any] = [node, "1" if force else "0"]
            for sid, u in entries:
                args += [sid, index[u]]
            got = await self._lua(P_REAP, keys, args)
            if got == -1:  # it renewed its lease meanwhile: alive after all
                return out
            user_of = dict(entries)
            removed = [text(s) for s in got]
            out += [(s, user_of[s]) for s in removed]
            if len(entries) < REAP_BATCH:
                return out


def new_node_id() -> str:
    return uuid.uuid4().hex


def _chunks(items: list[T], n: int) -> Iterator[list[T]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
