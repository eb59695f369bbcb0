"""Where the encrypted-channel relay keeps its coordination state: one node in memory, or
Redis shared with other appliance nodes *and* with open-webui 0.12's own socket server.

Only account bindings and liveness are kept, never packets. Per channel one JSON value

    {channel, session, host, members: {pid: {sid, user, name, key, seen, out, admitted}},
     expires}

saved with a 90 s TTL. In Redis the layout is open-webui's (`socket/encryption.py`), byte for
byte, so that one relay session can hold browsers of both servers:

    <prefix>:encryption:{<sha256(channel)>}         the state (string, EX 90)
    <prefix>:encryption:{<sha256(channel)>}:lock    redis-py Lock: SET token NX PX 10000
    <prefix>:encryption:{<sha256('rate:<user>:admission'|'rate:<user>:traffic')>}
                                                    hash count, bytes (EXPIRE period)

(open-webui builds these names itself, without the appliance's KeySpace, so they are built
here the same way; the hash tag keeps a state and its lock in one Cluster slot.) A change is
read-modify-write under the lock and saved by a Lua compare-and-set on the lock's token:
a worker whose lease ran out never overwrites a newer owner's state.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ..core.errors import StoreError
from .redis_conn import AnyRedis, KeySpace
from .redis_ops import Lua, RedisUser

TTL = 90  # seconds a state lives without a save
LOCK_TIMEOUT = 10.0  # seconds a lease lasts (redis-py Lock `timeout`)
LOCK_WAIT = 2.0  # seconds to wait for the lease (`blocking_timeout`)
LOCK_RETRY = 0.1  # seconds between attempts (redis-py's default `sleep`)
MAX_PACKET = 1024 * 1024
# bucket -> (period in seconds, events per period); bytes per period in either: 4 MiB
BUCKETS = {"admission": (60, 10), "traffic": (1, 100)}
MAX_BYTES = 4 * MAX_PACKET

# open-webui's scripts, unchanged: the two servers must agree on what they do
SAVE = Lua(
    "if redis.call('get', KEYS[2]) ~= ARGV[1] then return 0 end "
    "if ARGV[2] == '' then redis.call('del', KEYS[1]) "
    "else redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end return 1")
RATE = Lua(
    "local n = redis.call('hincrby', KEYS[1], 'count', 1) "
    "local b = redis.call('hincrby', KEYS[1], 'bytes', ARGV[1]) "
    "if n == 1 then redis.call('expire', KEYS[1], ARGV[2]) end "
    "if n > tonumber(ARGV[3]) or b > tonumber(ARGV[4]) then return 0 end return 1")
# redis-py's Lock release
RELEASE = Lua(
    "local token = redis.call('get', KEYS[1]) "
    "if not token or token ~= ARGV[1] then return 0 end "
    "redis.call('del', KEYS[1]) return 1")


class LeaseLost(StoreError):
    """The channel's lock was not ours any more when saving: another worker may own the
    state now, and nothing was written."""


def state_key(prefix: str, name: str) -> str:
    """open-webui's `Registry.key`: the name is hashed, the digest is the hash tag."""
    return f"{prefix}:encryption:{{{hashlib.sha256(name.encode()).hexdigest()}}}"


def bucket_of(action: str) -> str:
    return "admission" if action in ("start", "join") else "traffic"


def _expired(state: dict[str, Any] | None, now: float) -> bool:
    return state is not None and state.get("expires", 0) <= now


class Lease:
    """The state of one channel as read under its lock; `save` writes it back (None
    deletes it). Valid only inside `RelayState.transaction`."""

    def __init__(self, channel: str, state: dict[str, Any] | None,
                 save: Callable[[str, dict[str, Any] | None], Any]) -> None:
        self.channel = channel
        self.state = state
        self._save = save

    async def save(self, state: dict[str, Any] | None) -> None:
        await self._save(self.channel, state)


class RelayState(Protocol):
    def transaction(self, channel: str) -> contextlib.AbstractAsyncContextManager[Lease]: ...

    async def admit(self, user_id: str, action: str, size: int) -> bool:
        """Count one request of `size` bytes; False when over the user's bucket."""

    async def sweep(self) -> None:
        """Drop expired states that nobody reads any more (memory only)."""


class MemoryRelayState:
    """One node: the states in a dict behind one lock, as open-webui without Redis."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self.values: dict[str, str] = {}
        self.rates: dict[tuple[str, str], tuple[float, int, int]] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def transaction(self, channel: str) -> AsyncIterator[Lease]:
        async with self._lock:
            raw = self.values.get(state_key("", channel))
            state = json.loads(raw) if raw else None
            yield Lease(channel, None if _expired(state, self.clock()) else state, self._save)

    async def _save(self, channel: str, state: dict[str, Any] | None) -> None:
        key = state_key("", channel)
        if state is None:
            self.values.pop(key, None)
        else:
            state["expires"] = self.clock() + TTL
            self.values[key] = json.dumps(state, separators=(",", ":"))

    async def admit(self, user_id: str, action: str, size: int) -> bool:
        now = self.monotonic()
        if len(self.rates) > 10000:  # bounded: forget windows long over
            self.rates = {k: v for k, v in self.rates.items() if now - v[0] < 60}
        key = (user_id, bucket_of(action))
        period, maximum = BUCKETS[key[1]]
        start, count, total = self.rates.get(key, (now, 0, 0))
        if now - start >= period:
            start, count, total = now, 0, 0
        if count >= maximum or total + size > MAX_BYTES:
            return False
        self.rates[key] = (start, count + 1, total + size)
        return True

    async def sweep(self) -> None:
        now = self.clock()
        for key, raw in list(self.values.items()):
            if _expired(json.loads(raw), now):
                del self.values[key]


class RedisRelayState(RedisUser):
    """Redis, in open-webui's layout (module docstring). Every operation is bounded by the
    client's `redis_timeout`; a failure raises StoreError and the relay fails closed."""

    def __init__(self, client: AnyRedis, prefix: str, *, where: str = "Redis",
                 clock: Callable[[], float] = time.time,
                 lock_timeout: float = LOCK_TIMEOUT, lock_wait: float = LOCK_WAIT) -> None:
        super().__init__(client, KeySpace(prefix), where)
        self.prefix = prefix
        self.clock = clock
        self.lock_timeout = lock_timeout
        self.lock_wait = lock_wait

    def key(self, name: str) -> str:
        return state_key(self.prefix, name)

    @contextlib.asynccontextmanager
    async def transaction(self, channel: str) -> AsyncIterator[Lease]:
        key = self.key(channel)
        lock = key + ":lock"
        token = await self._acquire(lock)
        try:
            raw = await self._run(lambda c: c.get(key))
            state = json.loads(raw) if raw else None
            yield Lease(channel, None if _expired(state, self.clock()) else state,
                        lambda ch, st: self._save(key, token, st))
        finally:
            # Every save was checked against the token, so a release that finds the lock
            # gone (expired, or deleted by a first attempt whose reply was lost) changes
            # nothing; one that fails leaves the lock to expire.
            with contextlib.suppress(StoreError):
                await self._lua(RELEASE, [lock], [token])

    async def _acquire(self, lock_key: str) -> bytes:
        token = uuid.uuid1().hex.encode()  # what redis-py's Lock uses
        px = int(self.lock_timeout * 1000)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_wait
        while True:
            if await self._run(lambda c: c.set(lock_key, token, nx=True, px=px)):
                return token
            if loop.time() + LOCK_RETRY > deadline:
                raise StoreError(f"{self.where}: the encryption lock of a channel is busy")
            await asyncio.sleep(LOCK_RETRY)

    async def _save(self, key: str, token: bytes, state: dict[str, Any] | None) -> None:
        if state is not None:
            state["expires"] = self.clock() + TTL
        raw = json.dumps(state, separators=(",", ":")) if state is not None else ""
        if not await self._lua(SAVE, [key, key + ":lock"], [token, raw, TTL]):
            raise LeaseLost(f"{self.where}: the encryption lock of a channel expired")

    async def admit(self, user_id: str, action: str, size: int) -> bool:
        bucket = bucket_of(action)
        period, maximum = BUCKETS[bucket]
        key = self.key("rate:" + user_id + ":" + bucket)
        return bool(await self._lua(RATE, [key], [size, period, maximum, MAX_BYTES]))

    async def sweep(self) -> None:
        return None  # Redis expires states itself (TTL)
