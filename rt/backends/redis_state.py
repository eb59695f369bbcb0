"""Ephemeral state of cluster mode in Redis: live sessions (presence) and models in use.

Presence — every entry carries the id of the node that holds the session, and each node
holds a lease (`node_ttl` seconds) that its `heartbeat()` renews. Layout, one slot (tag
`presence`) so that every change is one atomic Lua script:

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

Deadlines come from Redis's clock (TIME inside the scripts), never from the nodes' clocks.
Nothing here scans: every read goes through a hash or set of the thing asked about.

Usage — models in use expire `ttl` seconds after their last touch, like the memory
registry, but cluster-wide (tag `usage`):

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
touching at once cannot pass them together.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from ..core.errors import StoreError, UsageFull
from .redis_conn import AnyRedis, KeySpace
from .redis_store import Lua
from .redis_store import RedisUser as _RedisUser

log = logging.getLogger("rt.backend")

REAP_BATCH = 500  # sessions per reaping script (bounds the time one script holds Redis)
EXPIRE_BATCH = 1000
RESYNC_PARALLEL = 32

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

# KEYS: nodes, node:<me>; ARGV: me, ttl_ms. Renews the lease; returns how many sessions
# Redis holds for this node (the node compares with its own count).
P_HEARTBEAT = Lua(_NOW + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('HLEN', KEYS[2])
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


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v




def new_node_id() -> str:
    return uuid.uuid4().hex


class RedisPresence(_RedisUser):
    """`PresenceRegistry` shared by every node. The app must call `heartbeat()` every
    `heartbeat_interval` seconds and `dead_sessions()` about as often (see the module
    docstring); `retire()` at a graceful stop."""

    def __init__(self, client: AnyRedis, keys: KeySpace, *, node_id: str | None = None,
                 node_ttl: float = 60.0, where: str = "Redis") -> None:
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

    @property
    def heartbeat_interval(self) -> float:
        """How often `heartbeat()` should run: a few beats fit in one lease."""
        return self.node_ttl / 4

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
            node, _, old_user = _s(got).partition("\n")
            await self._remove_entry(sid, node, old_user)
        raise StoreError(f"{self.where}: presence add {sid!r} kept conflicting")

    async def _remove_entry(self, sid: str, node: str, user_id: str) -> bool:
        return await self._lua(
            P_REMOVE,
            [self._k("sids"), self._k("node", node), self._k("counts", node),
             self._k("user", user_id)],
            [sid, f"{node}\n{user_id}", user_id, node]) == 1

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
        node, _, other = _s(entry).partition("\n")
        await self._remove_entry(sid, node, other)
        return other

    async def sessions_of(self, user_id: str) -> list[str]:
        got = await self._lua(P_SESSIONS_OF, [self._k("nodes"), self._k("user", user_id)])
        return [_s(s) for s in got]

    async def user_of(self, sid: str) -> str | None:
        got = await self._lua(P_USER_OF, [self._k("nodes"), self._k("sids")], [sid])
        return None if got is None else _s(got)

    async def nodes(self) -> list[str]:
        """Ids of the nodes whose lease is current (the live cluster)."""
        return sorted(_s(n) for n in await self._lua(P_NODES, [self._k("nodes")], ["1", ""]))

    async def users(self) -> dict[str, int]:
        nodes = await self.nodes()

        async def read(c: AnyRedis) -> list:
            pipe = c.pipeline(transaction=False)
            for n in nodes:
                pipe.hgetall(self._k("counts", n))
            return await pipe.execute()

        out: dict[str, int] = {}
        for counts in (await self._run(read) if nodes else []):
            for uid, count in counts.items():
                if int(count) > 0:
                    out[_s(uid)] = out.get(_s(uid), 0) + int(count)
        return out

    # ------------------------------------------------------------------ node lifecycle
    async def heartbeat(self) -> None:
        """Renew this node's lease; re-assert its sessions when Redis lost them (restart,
        failover) or when this node was taken for dead; clear removes that failed."""
        for sid, user_id in list(self._unremoved.items()):
            if sid not in self._local:
                await self._remove_entry(sid, self.node_id, user_id)
            self._unremoved.pop(sid, None)
        held = await self._lua(P_HEARTBEAT, [self._k("nodes"), self._k("node", self.node_id)],
                               [self.node_id, self._ttl_ms])
        if held != len(self._local):
            await self._resync()

    async def _resync(self) -> None:
        async with self._resync_lock:
            raw = await self._run(lambda c: c.hgetall(self._k("node", self.node_id)))
            held = {_s(k): _s(v) for k, v in raw.items()}
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
        cluster, which should announce it like a normal disconnect."""
        dead = [_s(n) for n in await self._lua(P_NODES, [self._k("nodes")], ["0", self.node_id])]
        out: list[tuple[str, str]] = []
        for node in dead:
            got = await self._reap(node, force=False)
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
            entries = sorted((_s(k), _s(v)) for k, v in raw.items())[:REAP_BATCH]
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
            removed = [_s(s) for s in got]
            out += [(s, user_of[s]) for s in removed]
            if len(entries) < REAP_BATCH:
                return out


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


# --- usage ------------------------------------------------------------------------------------

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

# KEYS: entries, by-sid, models, version; ARGV: older_than, limit. Returns {changed, expired}.
U_EXPIRE = Lua(_U_FORGET + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1],
                        'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(gone) do
  forget(m, string.find(m, '\\0', 1, true) - 1)
end
if changed == 1 then redis.call('INCR', KEYS[4]) end
return {changed, #gone}
""")

# KEYS: version, models. The version and the set, read together.
U_SNAPSHOT = Lua("""
return {redis.call('GET', KEYS[1]) or '0', redis.call('HKEYS', KEYS[2])}
""")


class RedisUsage(_RedisUser):
    """`UsageRegistry` shared by every node (see the module docstring)."""

    # Shared by nodes: the wall clock, the one clock they have in common (see
    # UsageRegistry.clock). A step of one node's clock shifts its entries' expiry.
    clock = staticmethod(time.time)
    shared = True

    def __init__(self, client: AnyRedis, keys: KeySpace, *, where: str = "Redis") -> None:
        super().__init__(client, keys, where)
        self._keys = [keys.key("usage", "entries"), keys.key("usage", "by-sid"),
                      keys.key("usage", "models"), keys.key("usage", "version")]

    @staticmethod
    def _check(sid: str) -> str:
        if "\0" in sid:
            raise ValueError("a session id cannot contain NUL")
        return sid

    async def touch(self, model: str, sid: str, now: float, max_per_sid: int | None = None,
                    max_models: int | None = None) -> bool:
        args = [self._check(sid), model, repr(float(now)), max_per_sid or 0, max_models or 0]
        got = await self._lua(U_TOUCH, self._keys, args)
        if got == -1:
            raise UsageFull("connection")
        if got == -2:
            raise UsageFull("total")
        return got == 1

    async def drop_sid(self, sid: str) -> bool:
        return await self._lua(U_DROP, self._keys, [self._check(sid)]) == 1

    async def expire(self, older_than: float) -> bool:
        changed = False
        while True:
            flag, count = await self._lua(U_EXPIRE, self._keys,
                                          [repr(float(older_than)), EXPIRE_BATCH])
            changed = changed or flag == 1
            if count < EXPIRE_BATCH:
                return changed

    async def models(self) -> list[str]:
        return sorted(_s(m) for m in await self._run(lambda c: c.hkeys(self._keys[2])))

    async def snapshot(self) -> tuple[int, list[str]]:
        version, models = await self._lua(U_SNAPSHOT, [self._keys[3], self._keys[2]])
        return int(version), sorted(_s(m) for m in models)

    async def version(self) -> int:
        return int(await self._run(lambda c: c.get(self._keys[3])) or 0)


class RedisEditors(_RedisUser):
    """`EditorRegistry` shared by every node: a hash per document (sid → editor JSON) and a
    set per session (its documents, the reverse index for cleanup). The two live in
    different Cluster slots, so they are written one after the other; both writes are
    idempotent and a reader never trusts an entry whose session is not alive in presence
    (a dead node's sessions vanish from there first)."""

    def __init__(self, client: AnyRedis, keys: KeySpace, presence: RedisPresence, *,
                 where: str = "Redis") -> None:
        super().__init__(client, keys, where)
        self.presence = presence

    def _doc(self, document_id: str) -> str:
        return self.keys.key(f"editors:{document_id}", "sids")

    def _sid(self, sid: str) -> str:
        return self.keys.key(f"editor-docs:{sid}", "docs")

    async def add(self, document_id: str, sid: str, editor: dict) -> None:
        value = json.dumps(editor, separators=(",", ":"))
        await self._run(lambda c: c.hset(self._doc(document_id), sid, value))
        await self._run(lambda c: c.sadd(self._sid(sid), document_id))

    async def remove(self, document_id: str, sid: str) -> dict | None:
        raw = await self._run(lambda c: c.hget(self._doc(document_id), sid))
        await self._run(lambda c: c.hdel(self._doc(document_id), sid))
        await self._run(lambda c: c.srem(self._sid(sid), document_id))
        return json.loads(raw) if raw is not None else None

    async def sessions(self, document_id: str) -> list[str]:
        sids = [_s(s) for s in await self._run(lambda c: c.hkeys(self._doc(document_id)))]
        return [sid for sid in sids if await self.presence.user_of(sid) is not None]

    async def documents_of(self, sid: str) -> list[str]:
        return sorted(_s(d) for d in await self._run(lambda c: c.smembers(self._sid(sid))))
