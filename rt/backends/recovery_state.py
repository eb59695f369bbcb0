"""Where connection state recovery keeps its state: the log of recoverable emits and the
records of recoverable sessions. In process on one node (`MemoryRecoveryState`), in Redis
for a cluster (`RedisRecoveryState`), so that a tab whose node died or was restarted
recovers on another node.

The log holds each recoverable emit once (not once per recipient): its offset, the rooms it
went to, the sids it skipped, and the Socket.IO packet without its closing bracket (the
`prefix`; the packet a client gets is `prefix + ',"<offset>"]'`, followed by its binary
attachments when it has any, `blobs`). A session that recovers
replays the entries after the offset it last saw that were meant for it (one of its rooms,
its sid room, not skipped). The log is bounded in entries, in bytes and in time; an entry
that had to go (or an emit too large to keep, kept as a marker without packet) makes a
recovery that would need it fail, never a replay with a hole presented as complete.

Offsets look like Redis stream ids, `<ms>-<seq>`, and compare as such. On Redis they are
the ids of a stream, and the emit is appended and published to every node (this one
included) by one script: every node then delivers in the stream's order, which is what
makes "after the offset the client last saw" exact.

A session record (`SessionRecord`) is written when a session binds, kept up to date with
its rooms while it lives (so it survives a node killed without a goodbye), and marked
disconnected when its connection ends; its TTL is the recovery window. A recovery takes it
(compare the secret, then delete: one recovery only).

Calls (events with an ack: a tool's confirmation or input dialog) sent to a recoverable
session, or made for it while it was away, are kept per session until answered (`add_call`,
`drop_call`, `calls`), so that the node where it recovers asks them again and routes the
answer to the caller.

Longer than most modules because it is one contract with its two implementations side by
side (in process and Redis), and the Redis one also repairs the delivery order after a lost
subscription.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

from ..core.errors import StoreError
from ..core.tasks import TaskGroup
from .redis_conn import AnyRedis, KeySpace
from .redis_ops import Lua, RedisUser, text

# what the delivery of one recorded emit is handed: offset, rooms (None: everybody),
# skipped sids, the packet's prefix, its binary attachments
Deliver = Callable[[str, "list[str] | None", "list[str]", str, "tuple[bytes, ...]"], None]
# one missed event: offset, prefix, attachments
Packet = tuple[str, str, tuple[bytes, ...]]
# one emit to append (`emit_many`): rooms (None: everybody), skipped sids, prefix, attachments
LogEntry = tuple["list[str] | None", "list[str]", str, "tuple[bytes, ...]"]

Offset = tuple[int, int]
ZERO: Offset = (0, 0)


def parse_offset(value: Any) -> Offset | None:
    """`<ms>-<seq>` → (ms, seq); None when it is not one."""
    if not isinstance(value, str) or len(value) > 48:
        return None
    ms, sep, seq = value.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        return None
    return int(ms), int(seq)


def format_offset(offset: Offset) -> str:
    return f"{offset[0]}-{offset[1]}"


@dataclass(slots=True)
class SessionRecord:
    sid: str
    secret: str  # sha256 of the secret half of the pid
    user: str
    name: str
    role: str
    rooms: list[str]
    since: str  # the log's last offset when the session bound
    node: str
    live: bool = True
    ip: str = ""
    until: float = 0.0  # disconnected: wall-clock end of its recovery window

    def dumps(self) -> bytes:
        # orjson writes a dataclass as the dict of its fields itself: asdict() deep-copies
        # them first (18 us a record against 1.1; a node refreshes all of its records
        # every third of the recovery window)
        return orjson.dumps(self)

    @classmethod
    def loads(cls, raw: bytes | str | None) -> SessionRecord | None:
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            return cls(**data)
        except (orjson.JSONDecodeError, TypeError):
            return None


class Missed:
    """The outcome of reading the log for one session: `packets` (offset, prefix,
    attachments) in order, or `reason` why the recovery cannot be complete."""

    __slots__ = ("packets", "reason")

    def __init__(self, packets: list[Packet] | None = None, reason: str = ""):
        self.packets = packets or []
        self.reason = reason


@dataclass
class Bounds:
    max_packets: int = 1000
    max_bytes: int = 1 << 20
    max_packet_bytes: int = 256 << 10
    log_entries: int = 100000
    log_bytes: int = 64 << 20
    window: float = 120.0


def _meant_for(rooms: Sequence[str] | None, skip: Sequence[str], sid: str,
               mine: frozenset[str]) -> bool:
    if sid in skip:
        return False
    return rooms is None or any(r in mine for r in rooms)


class RecoveryState(Protocol):
    bounds: Bounds
    deliver: Deliver | None
    shared: bool  # whether other nodes see it (a cluster)

    async def emit(self, rooms: list[str] | None, skip: list[str], prefix: str,
                   blobs: tuple[bytes, ...] = ()) -> str: ...
    async def emit_many(self, entries: Sequence[LogEntry]) -> list[str]:
        """Append several emits in their order, at once where the log is remote (one
        script call): their offsets."""
    async def mark_gap(self, rooms: list[str] | None, skip: list[str]) -> None: ...
    async def head(self) -> str: ...
    async def save(self, record: SessionRecord, ttl: float) -> None: ...
    async def save_many(self, records: list[SessionRecord], ttl: float) -> list[str]: ...
    async def get(self, sid: str) -> SessionRecord | None: ...
    async def take(self, sid: str, secret: str) -> SessionRecord | None: ...
    async def disconnected(self, record: SessionRecord, ttl: float) -> bool: ...
    async def drop(self, sid: str, node: str) -> bool: ...
    async def due(self, now: float) -> list[SessionRecord]: ...
    async def missed(self, start: str, rooms: Sequence[str], sid: str) -> Missed: ...
    async def add_call(self, sid: str, key: str, value: bytes, ttl: float,
                       only_new: bool = False) -> None: ...
    async def drop_call(self, sid: str, key: str) -> None: ...
    async def calls(self, sid: str) -> list[bytes]: ...
    async def drop_calls(self, sid: str) -> None: ...
    def figures_data(self) -> dict[str, float]: ...


@dataclass
class _Entry:
    offset: Offset
    rooms: frozenset[str] | None
    skip: frozenset[str]
    prefix: str | None  # None: a marker (an emit too large to keep)
    blobs: tuple[bytes, ...]
    size: int
    at: float


@dataclass
class MemoryRecoveryState:
    """One node: the log in a deque, the records in a dict (with their deadline)."""

    bounds: Bounds = field(default_factory=Bounds)
    clock: Callable[[], float] = time.monotonic
    deliver: Deliver | None = None
    shared = False

    def __post_init__(self) -> None:
        self._log: deque[_Entry] = deque()
        self._bytes = 0
        self._boot = int(time.time() * 1000)
        self._seq = 0
        self._dropped: Offset = ZERO  # newest offset dropped from the log
        self._records: dict[str, tuple[SessionRecord, float]] = {}
        self._pending: dict[str, float] = {}  # disconnected sid → end of its window
        self._calls: dict[str, dict[str, bytes]] = {}  # sid → call key → the call
        self.evicted = 0

    def _next(self) -> Offset:
        self._seq += 1
        return (self._boot, self._seq)

    def _append(self, entry: _Entry) -> None:
        b = self.bounds
        self._log.append(entry)
        self._bytes += entry.size
        horizon = self.clock() - b.window
        log = self._log
        while log and (len(log) > b.log_entries or self._bytes > b.log_bytes
                       or log[0].at < horizon):
            old = log.popleft()
            self._bytes -= old.size
            self._dropped = old.offset
            self.evicted += 1

    async def emit(self, rooms: list[str] | None, skip: list[str], prefix: str,
                   blobs: tuple[bytes, ...] = ()) -> str:
        offset = self._next()
        size = len(prefix) + sum(len(b) for b in blobs) + 64
        self._append(_Entry(offset, None if rooms is None else frozenset(rooms),
                            frozenset(skip), prefix, blobs, size, self.clock()))
        text_offset = format_offset(offset)
        if self.deliver is not None:
            self.deliver(text_offset, rooms, skip, prefix, blobs)
        return text_offset

    async def emit_many(self, entries: Sequence[LogEntry]) -> list[str]:
        return [await self.emit(*entry) for entry in entries]

    async def mark_gap(self, rooms: list[str] | None, skip: list[str]) -> None:
        self._append(_Entry(self._next(), None if rooms is None else frozenset(rooms),
                            frozenset(skip), None, (), 64, self.clock()))

    async def head(self) -> str:
        return format_offset((self._boot, self._seq))

    def _live(self, sid: str) -> SessionRecord | None:
        got = self._records.get(sid)
        if got is None:
            return None
        if got[1] < self.clock():
            del self._records[sid]
            return None
        return got[0]

    async def save(self, record: SessionRecord, ttl: float) -> None:
        self._records[record.sid] = (record, self.clock() + ttl)

    async def save_many(self, records: list[SessionRecord], ttl: float) -> list[str]:
        """Refresh live records of this node; returns the sids whose record is another
        node's now (recovered there) and was left alone."""
        lost = []
        for record in records:
            current = self._live(record.sid)
            if current is not None and current.node != record.node:
                lost.append(record.sid)
            else:
                await self.save(record, ttl)
        return lost

    async def get(self, sid: str) -> SessionRecord | None:
        return self._live(sid)

    async def take(self, sid: str, secret: str) -> SessionRecord | None:
        record = self._live(sid)
        if record is None or record.secret != secret:
            return None
        del self._records[sid]
        self._pending.pop(sid, None)
        return record

    async def disconnected(self, record: SessionRecord, ttl: float) -> bool:
        current = self._live(record.sid)
        if current is not None and current.node != record.node:
            return False
        record.live = False
        await self.save(record, ttl)
        self._pending[record.sid] = record.until
        return True

    async def drop(self, sid: str, node: str) -> bool:
        current = self._live(sid)
        if current is None or current.node != node:
            return False
        del self._records[sid]
        self._pending.pop(sid, None)
        return True

    async def due(self, now: float) -> list[SessionRecord]:
        out = []
        for sid, until in list(self._pending.items()):
            if until <= now:
                record = self._live(sid)
                if record is None:
                    del self._pending[sid]
                else:
                    out.append(record)
        return out

    async def missed(self, start: str, rooms: Sequence[str], sid: str) -> Missed:
        after = parse_offset(start)
        if after is None:
            return Missed(reason="bad_offset")
        if after[0] != self._boot and after != ZERO:
            return Missed(reason="unknown_offset")  # of another run of this node
        if self._dropped > after:
            return Missed(reason="expired")
        b = self.bounds
        mine = frozenset(rooms) | {sid}
        out: list[Packet] = []
        size = 0
        for entry in self._log:  # newest last; a deque has no bisect, the bound is small
            if entry.offset <= after:
                continue
            if not _meant_for(tuple(entry.rooms) if entry.rooms is not None else None,
                              tuple(entry.skip), sid, mine):
                continue
            if entry.prefix is None:
                return Missed(reason="unrecorded")
            size += entry.size
            out.append((format_offset(entry.offset), entry.prefix, entry.blobs))
            if len(out) > b.max_packets or size > b.max_bytes:
                return Missed(reason="bounds")
        return Missed(out)

    async def add_call(self, sid: str, key: str, value: bytes, ttl: float,
                       only_new: bool = False) -> None:
        calls = self._calls.setdefault(sid, {})
        if not (only_new and key in calls):
            calls[key] = value

    async def drop_call(self, sid: str, key: str) -> None:
        calls = self._calls.get(sid)
        if calls is not None:
            calls.pop(key, None)
            if not calls:
                del self._calls[sid]

    async def calls(self, sid: str) -> list[bytes]:
        return list(self._calls.get(sid, {}).values())

    async def drop_calls(self, sid: str) -> None:
        self._calls.pop(sid, None)

    def figures_data(self) -> dict[str, float]:
        return {"entries": len(self._log), "bytes": self._bytes, "evicted": self.evicted,
                "records": len(self._records), "pending": len(self._pending)}

    # a restart of the one node: what it kept is written at its stop and read at its start
    def dump(self) -> bytes:
        now, wall = self.clock(), time.time()
        return orjson.dumps({
            "boot": self._boot, "seq": self._seq, "dropped": list(self._dropped),
            "log": [[list(e.offset), None if e.rooms is None else sorted(e.rooms),
                     sorted(e.skip), e.prefix,
                     [base64.b64encode(b).decode() for b in e.blobs], e.size,
                     wall - (now - e.at)] for e in self._log],
            "records": [[asdict(r), wall + (deadline - now)]
                        for r, deadline in self._records.values() if deadline > now],
            "pending": self._pending,
            "calls": {sid: {k: v.decode() for k, v in calls.items()}
                      for sid, calls in self._calls.items() if sid in self._records}})

    def load(self, raw: bytes) -> int:
        """What `dump` wrote (by an earlier run of this node); returns the records read.
        Entries and records whose time passed meanwhile are left out."""
        data = orjson.loads(raw)
        now, wall = self.clock(), time.time()
        self._boot, self._seq = int(data["boot"]), int(data["seq"])
        dropped = data["dropped"]
        self._dropped = (int(dropped[0]), int(dropped[1]))
        for offset, rooms, skip, prefix, blobs, size, at in data["log"]:
            self._append(_Entry((int(offset[0]), int(offset[1])),
                                None if rooms is None else frozenset(rooms), frozenset(skip),
                                prefix, tuple(base64.b64decode(b) for b in blobs), int(size),
                                now - (wall - float(at))))
        for fields, deadline in data["records"]:
            if deadline > wall:
                record = SessionRecord(**fields)
                self._records[record.sid] = (record, now + (deadline - wall))
        self._pending = {sid: float(until) for sid, until in data["pending"].items()
                         if sid in self._records}
        self._calls = {sid: {k: v.encode() for k, v in calls.items()}
                       for sid, calls in data.get("calls", {}).items() if sid in self._records}
        return len(self._records)


# ---------------------------------------------------------------------------- Redis
# KEYS: log, sequence; ARGV: channel, sharded, maxlen, window_ms, host_id, then per emit
# rooms, skip, prefix, attachments (a JSON list of base64) → the emits' ids, in order. The
# sequence numbers the published emits one by one, so that a node that missed some (its
# subscription was lost) sees the gap.
R_EMIT = Lua("""
local ids = {}
for i = 6, #ARGV, 4 do
  local n = redis.call('INCR', KEYS[2])
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',
                        'r', ARGV[i], 's', ARGV[i + 1], 'p', ARGV[i + 2], 'a', ARGV[i + 3])
  local msg = cjson.encode({method = 'rt:control', kind = 'recovery:emit', host_id = ARGV[5],
                            payload = {id = id, n = n, r = ARGV[i], s = ARGV[i + 1],
                                       p = ARGV[i + 2], a = ARGV[i + 3]}})
  if ARGV[2] == '1' then
    redis.call('SPUBLISH', ARGV[1], msg)
  else
    redis.call('PUBLISH', ARGV[1], msg)
  end
  ids[#ids + 1] = id
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) + 60000)
local t = redis.call('TIME')
local horizon = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[4])
redis.call('XTRIM', KEYS[1], 'MINID', '~', horizon)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) + 60000)
return ids
""")

# KEYS: record; ARGV: secret → the record, deleted, when the secret matches
R_TAKE = Lua("""
local v = redis.call('GET', KEYS[1])
if not v then return false end
local ok, rec = pcall(cjson.decode, v)
if not ok or rec['secret'] ~= ARGV[1] then return false end
redis.call('DEL', KEYS[1])
return v
""")

# KEYS: record; ARGV: node, new value, ttl_ms → 1 when written (absent or of this node);
# also the refresh of a live record
R_DISCONNECTED = Lua("""
local v = redis.call('GET', KEYS[1])
if v then
  local ok, rec = pcall(cjson.decode, v)
  if ok and rec['node'] ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
""")

# KEYS: record; ARGV: node → 1 when deleted (it was this node's)
R_DROP = Lua("""
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, rec = pcall(cjson.decode, v)
if ok and rec['node'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
""")

READ_BATCH = 500
log = logging.getLogger("rt.recovery")


class RedisRecoveryState(RedisUser):
    """A cluster's recovery state: the log is one stream, on the slot of the client
    manager's pub/sub channel (so one script appends and publishes, on a Cluster too);
    records are one key each, with the recovery window as TTL."""

    shared = True

    def __init__(self, client: AnyRedis, keys: KeySpace, *, channel: str, sharded: bool,
                 host_id: str, bounds: Bounds | None = None, where: str = "Redis") -> None:
        super().__init__(client, keys, where)
        self.bounds = bounds or Bounds()
        self.channel = channel
        self.sharded = sharded
        # not any node's host id: every node, this one included, handles the message
        self.host_id = host_id
        self.log_key = f"{{{channel}}}:recovery-log"
        self.seq_key = f"{{{channel}}}:recovery-seq"
        self.pending_key = keys.key("recovery-pending")
        # the last emit delivered here (sequence, offset), and while a gap is repaired the
        # emits that came after it
        self._last: tuple[int, str] | None = None
        self._held: list[dict[str, Any]] | None = None
        self.repaired = 0
        self.deliver: Deliver | None = None
        self.appended = 0
        self.append_calls = 0  # script calls that appended them (several at a time)
        self.tasks = TaskGroup()  # the repair of a gap in what reached this node

    def _record_key(self, sid: str) -> str:
        return self.keys.key(f"recovery:{sid}")

    def _calls_key(self, sid: str) -> str:
        return self.keys.key(f"recovery-calls:{sid}")

    async def add_call(self, sid: str, key: str, value: bytes, ttl: float,
                       only_new: bool = False) -> None:
        name, px = self._calls_key(sid), max(1, int(ttl * 1000))

        async def add(c: AnyRedis) -> None:
            if only_new:
                await c.hsetnx(name, key, value)
            else:
                await c.hset(name, key, value)
            await c.pexpire(name, px)
        await self._run(add)

    async def drop_call(self, sid: str, key: str) -> None:
        name = self._calls_key(sid)
        await self._run(lambda c: c.hdel(name, key))

    async def calls(self, sid: str) -> list[bytes]:
        name = self._calls_key(sid)
        got: Any = await self._run(lambda c: c.hgetall(name))
        return [bytes(v) for v in dict(got).values()]

    async def drop_calls(self, sid: str) -> None:
        name = self._calls_key(sid)
        await self._run(lambda c: c.delete(name))

    async def emit(self, rooms: list[str] | None, skip: list[str], prefix: str,
                   blobs: tuple[bytes, ...] = ()) -> str:
        return (await self.emit_many([(rooms, skip, prefix, blobs)]))[0]

    async def emit_many(self, entries: Sequence[LogEntry]) -> list[str]:
        b = self.bounds
        args: list[Any] = [self.channel, "1" if self.sharded else "0", b.log_entries,
                           int(b.window * 1000), self.host_id]
        for rooms, skip, prefix, blobs in entries:
            args += [orjson.dumps(rooms), orjson.dumps(skip), prefix,
                     orjson.dumps([base64.b64encode(blob).decode() for blob in blobs])]
        got = await self._lua(R_EMIT, [self.log_key, self.seq_key], args)
        self.appended += len(entries)
        self.append_calls += 1
        return [text(offset) for offset in got]

    async def mark_gap(self, rooms: list[str] | None, skip: list[str]) -> None:
        key, r, s = self.log_key, orjson.dumps(rooms), orjson.dumps(skip)
        await self._run(lambda c: c.xadd(key, {"r": r, "s": s, "g": "1"},
                                         maxlen=self.bounds.log_entries, approximate=True))

    def handle(self, payload: dict[str, Any]) -> None:
        """A `recovery:emit` message from the pub/sub channel (every node's, ours too), in
        the log's order. When its sequence number shows that messages were missed (the
        subscription was lost for a while), they are read from the log and delivered
        first; what arrives meanwhile waits."""
        if self.deliver is None:
            return
        if self._held is not None:
            self._held.append(payload)
            return
        n, offset = payload.get("n"), payload.get("id")
        if type(n) is not int or not isinstance(offset, str):
            return
        last = self._last
        if last is not None and n > last[0] + 1:
            self._held = [payload]
            self.tasks.spawn("recovery log repair", self._repair(last[1]))
            return
        self._deliver(payload)

    async def _repair(self, after: str) -> None:
        try:
            cursor = "(" + after
            while True:
                async def read(c: AnyRedis, cursor: str = cursor) -> Any:
                    return await c.xrange(self.log_key, min=cursor, count=READ_BATCH)
                try:
                    batch = await self._run(read)
                except StoreError as exc:
                    log.warning("recovery log: missed emits not read: %s", exc)
                    break
                held = self._held or []
                until = parse_offset(held[0].get("id")) if held else None
                for raw_id, fields in batch:
                    entry_id = text(raw_id)
                    if until is not None and (parse_offset(entry_id) or ZERO) >= until:
                        batch = []
                        break
                    if b"p" not in fields:
                        continue  # a marker
                    self.repaired += 1
                    self._deliver({"id": entry_id, "n": None, "r": text(fields[b"r"]),
                                   "s": text(fields[b"s"]), "p": text(fields[b"p"]),
                                   "a": fields.get(b"a")})
                if len(batch) < READ_BATCH:
                    break
                cursor = "(" + text(batch[-1][0])
        finally:
            held, self._held = self._held or [], None
            for payload in held:
                self._deliver(payload)

    def _deliver(self, payload: dict[str, Any]) -> None:
        assert self.deliver is not None
        try:
            offset, prefix = payload["id"], payload["p"]
            rooms = orjson.loads(payload["r"])
            skip = orjson.loads(payload["s"])
            blobs = _blobs(payload.get("a"))
        except (KeyError, TypeError, ValueError):
            return
        if isinstance(offset, str) and isinstance(prefix, str) and isinstance(skip, list) \
                and (rooms is None or isinstance(rooms, list)):
            n = payload.get("n")
            if type(n) is int:
                self._last = (n, offset)
            elif self._last is not None:
                self._last = (self._last[0], offset)
            self.deliver(offset, rooms, skip, prefix, blobs)

    async def head(self) -> str:
        """The last id the log gave (kept by Redis after its entry was trimmed)."""
        info = await self._info()
        value = info.get("last-generated-id", info.get(b"last-generated-id"))
        return text(value) if value is not None else "0-0"

    async def _info(self) -> dict[Any, Any]:
        key = self.log_key
        try:
            return dict(await self._run(lambda c: c.xinfo_stream(key)))
        except StoreError as exc:
            if "no such key" in str(exc).lower():
                return {}
            raise

    async def save(self, record: SessionRecord, ttl: float) -> None:
        key, value = self._record_key(record.sid), record.dumps()
        await self._run(lambda c: c.set(key, value, px=max(1, int(ttl * 1000))))

    async def save_many(self, records: list[SessionRecord], ttl: float) -> list[str]:
        """Refresh live records of this node (compare-and-set on the node, a hundred at
        a time); returns the sids whose record is another node's now (recovered there)
        and was left alone."""
        px = max(1, int(ttl * 1000))
        lost: list[str] = []
        for i in range(0, len(records), 100):
            chunk = records[i:i + 100]
            got = await asyncio.gather(*(
                self._lua(R_DISCONNECTED, [self._record_key(r.sid)], [r.node, r.dumps(), px])
                for r in chunk))
            lost += [r.sid for r, ok in zip(chunk, got, strict=True) if ok != 1]
        return lost

    async def get(self, sid: str) -> SessionRecord | None:
        key = self._record_key(sid)
        return SessionRecord.loads(await self._run(lambda c: c.get(key)))

    async def take(self, sid: str, secret: str) -> SessionRecord | None:
        record = SessionRecord.loads(
            await self._lua(R_TAKE, [self._record_key(sid)], [secret]))
        if record is not None:
            await self._unpend(sid)
        return record

    async def disconnected(self, record: SessionRecord, ttl: float) -> bool:
        record.live = False
        got = await self._lua(R_DISCONNECTED, [self._record_key(record.sid)],
                              [record.node, record.dumps(), max(1, int(ttl * 1000))])
        if got != 1:
            return False
        # the cluster's list of leaves to announce (a record of its own slot each: not
        # in the same script on a Cluster; a stale member is dropped by `due`)
        key, member = self.pending_key, record.sid
        await self._run(lambda c: c.zadd(key, {member: record.until}))
        return True

    async def drop(self, sid: str, node: str) -> bool:
        dropped = bool(await self._lua(R_DROP, [self._record_key(sid)], [node]) == 1)
        await self._unpend(sid)
        return dropped

    async def _unpend(self, sid: str) -> None:
        key = self.pending_key
        try:
            await self._run(lambda c: c.zrem(key, sid))
        except StoreError:
            pass  # `due` finds no record for it and drops it

    async def due(self, now: float) -> list[SessionRecord]:
        """Disconnected records whose window passed (any node's: whoever claims one
        announces its leave)."""
        key = self.pending_key
        got: Any = await self._run(
            lambda c: c.zrangebyscore(key, "-inf", now, start=0, num=200))
        sids = [text(s) for s in got]
        out = []
        for sid in sids:
            record = await self.get(sid)
            if record is None or record.live:
                await self._unpend(sid)  # recovered, or gone with its TTL
            else:
                out.append(record)
        return out

    async def missed(self, start: str, rooms: Sequence[str], sid: str) -> Missed:
        after = parse_offset(start)
        if after is None:
            return Missed(reason="bad_offset")
        b = self.bounds
        mine = frozenset(rooms) | {sid}
        out: list[Packet] = []
        size = 0
        key = self.log_key
        cursor = "(" + start if after != ZERO else "-"
        while True:
            async def read(c: AnyRedis, cursor: str = cursor) -> Any:
                return await c.xrange(key, min=cursor, count=READ_BATCH)
            batch = await self._run(read)
            for raw_id, fields in batch:
                entry_id = text(raw_id)
                try:
                    entry_rooms = orjson.loads(fields[b"r"])
                    skip = orjson.loads(fields[b"s"])
                    blobs = _blobs(fields.get(b"a"))
                except (KeyError, TypeError, ValueError):
                    return Missed(reason="unreadable")
                if not _meant_for(entry_rooms, skip, sid, mine):
                    continue
                packet = fields.get(b"p")
                if packet is None:
                    return Missed(reason="unrecorded")
                prefix = text(packet)
                size += len(prefix) + sum(len(blob) for blob in blobs)
                out.append((entry_id, prefix, blobs))
                if len(out) > b.max_packets or size > b.max_bytes:
                    return Missed(reason="bounds")
            if len(batch) < READ_BATCH:
                break
            cursor = "(" + text(batch[-1][0])
        # checked after reading, so that a trim meanwhile counts
        if await self._trimmed_after(after):
            return Missed(reason="expired")
        return Missed(out)

    async def _trimmed_after(self, after: Offset) -> bool:
        """Whether entries after `after` may have been trimmed (bounds or age). Entries go
        oldest first, so: some were trimmed, and the oldest kept is after `after` (then
        `after` itself is gone, and what followed it may be too). Errs on the side of a
        failed recovery when nothing followed it."""
        info = await self._info()
        def field(name: str) -> Any:
            return info.get(name, info.get(name.encode()))
        added, length = field("entries-added"), field("length")
        if added is None or length is None or int(added) <= int(length):
            return False  # nothing was ever trimmed (or a Redis without the counter)
        first = field("first-entry")
        oldest = parse_offset(text(first[0])) if first else None
        if oldest is None:  # empty: everything up to the last id went
            last = field("last-generated-id")
            return last is not None and (parse_offset(text(last)) or ZERO) > after
        return oldest > after

    def figures_data(self) -> dict[str, float]:
        return {"appended": self.appended, "append_calls": self.append_calls,
                "repaired": self.repaired}


def _blobs(raw: Any) -> tuple[bytes, ...]:
    """Attachments as kept in Redis: a JSON list of base64 (absent: none)."""
    if raw is None:
        return ()
    items = orjson.loads(raw)
    if not isinstance(items, list):
        raise ValueError("attachments are not a list")
    return tuple(base64.b64decode(item, validate=True) for item in items)


def figures_names() -> Iterator[str]:
    yield from ("entries", "bytes", "evicted", "records", "appended")
