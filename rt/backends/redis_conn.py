"""Redis connections of cluster mode, built from `[state]`, and the one key builder.

Three topologies, chosen by the settings (protocol §6):

- a URL: `redis://[user:password@]host[:port][/db]`, `rediss://...` (TLS), `unix:///path`;
- Sentinel: `sentinel_hosts` lists the sentinels (`host` or `host:port`, default port
  `sentinel_port`); the URL's host is then the *master name* and its user, password, db and
  scheme apply to the master, as in the original system (open-webui), whose sentinels take
  no password;
- Cluster: `redis_cluster = true`; the URL names any node (db must be 0).

Every client made here is an asyncio client that returns bytes (`decode_responses=False`):
blobs are stored and read as bytes and the callers decode text themselves. Building a
client does no I/O; `connect()` is the start-up check that fails with a clear message
when Redis is unreachable (the appliance then exits; it never falls back to memory).

Every key and channel name comes from `KeySpace` (one function, `key`), so that two
deployments with different prefixes can share one Redis and a Cluster slot holds
everything one atomic operation touches:

    <prefix>:{<tag>}:<part>:<part>...

The hash tag `{<tag>}` decides the Cluster slot. Callers pick it per entity (a document
bucket, a chat, a note) or per family of keys that must change together (the directory,
presence, usage); see redis_store.py, redis_presence.py and redis_usage.py for the layouts.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

# (redis-py's hiredis reader and its "no whole reply yet" value: message_reader below)
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisClusterException, RedisError

from ..core.errors import StoreError

AnyRedis = Redis | RedisCluster

# Failures that mean "Redis cannot serve now" wherever a client is used.
# (RedisClusterException, e.g. "no startup node reachable", is not a RedisError.)
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


class RedisConfigError(ValueError):
    """The Redis settings cannot work (e.g. a Cluster URL with db 3)."""


class RedisUnavailable(StoreError):
    """Redis does not answer (start-up check, or a store call while it is down)."""


# Commands in flight per client at most. redis-py pools refuse (raise) past their size
# (100 connections by default, per node in a Cluster) instead of waiting; every component
# sharing a client waits at this gate instead, so a burst queues instead of failing.
MAX_IN_FLIGHT = 64
_gates: weakref.WeakKeyDictionary[object, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def gate(client: object) -> asyncio.Semaphore:
    """The semaphore shared by every user of `client` (store, presence, usage)."""
    sem = _gates.get(client)
    if sem is None:
        sem = _gates[client] = asyncio.Semaphore(MAX_IN_FLIGHT)
    return sem


_timeouts: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()


def op_timeout(client: object) -> float:
    """How long one operation on `client` may take in all: the command timeout of the
    target that built it (`[state] redis_timeout`), else the default."""
    return _timeouts.get(client, RedisTarget.command_timeout)


async def drop_idle(client: object) -> None:
    """Close the idle pooled connections of `client`, after an operation timed out. A Redis
    that went silent may have lost them for good (a partition that dropped their state, a
    replaced host behind the same address): each would cost its next user a whole timeout.
    They reconnect when next used. (A Cluster has a pool per node and no such attribute.)"""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        with contextlib.suppress(*REDIS_ERRORS):
            await pool.disconnect(inuse_connections=False)


async def ensure_ready(client: object) -> None:
    """Let a RedisCluster (re)discover its nodes before a command goes out. redis-py 8.1
    does that lazily inside each command; when many commands start together on a fresh
    client, or right after it lost a node, some of them fail with AttributeError on a
    connection torn down under them. `initialize()` holds a lock, so callers wait here
    for the one discovery instead. (`_initialize` is redis-py's own "needs discovery"
    flag; without it this does nothing.)"""
    if getattr(client, "_initialize", False) is True and isinstance(client, RedisCluster):
        await client.initialize()


def redact(url: str) -> str:
    """The URL without its password (greedy up to the last '@': passwords hold '@' too)."""
    return re.sub(r"(//[^/@:]*:).*@", r"\1***@", url)


class KeySpace:
    """The only place Redis key and channel names are built.

    `key(tag, *parts)` gives `<prefix>:{<tag>}:<part>:...`. Layouts keep keys distinct by
    putting each variable id last behind a fixed, prefix-free word (`user:<id>` and
    `user-channels:<id>`, never `user:<id>:channels`), so no id can forge another key.
    Braces in the prefix would move the Cluster hash tag and are refused.
    """

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise RedisConfigError(
                f"key prefix {prefix!r} must not contain '{{' or '}}' (Redis Cluster hash tags)")
        self.prefix = prefix

    def key(self, tag: str, *parts: str) -> str:
        head = f"{self.prefix}:{{{tag}}}" if self.prefix else f"{{{tag}}}"
        return ":".join((head, *parts))

    def channel(self, name: str) -> str:
        """A pub/sub channel name (no hash tag: one channel is one slot anyway)."""
        return f"{self.prefix}:{name}" if self.prefix else name


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to reach it; `client()` builds an asyncio client."""

    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    sentinel_hosts: tuple[str, ...] = ()
    sentinel_port: int = 26379
    key_prefix: str = "open-webui"
    connect_timeout: float = 5.0
    # `[state] redis_timeout`: the socket timeout of every command, and the deadline of
    # one whole operation of the store and registries (queueing at the gate and retries
    # included, see `op_timeout`); pub/sub reads pass their own timeout (see redis_manager).
    command_timeout: float = 3.0
    extra: dict[str, Any] = field(default_factory=dict)  # more client kwargs (tests, TLS)

    @classmethod
    def from_settings(cls, state: Any, **overrides: Any) -> RedisTarget:
        """From `settings.state` ([state] section)."""
        target = cls(
            url=state.redis_url,
            cluster=state.redis_cluster,
            sentinel_hosts=tuple(state.sentinel_hosts),
            sentinel_port=state.sentinel_port,
            key_prefix=state.key_prefix,
            command_timeout=state.redis_timeout,
            **overrides,
        )
        target.validate()
        return target

    # ------------------------------------------------------------------ checks, names
    def validate(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise RedisConfigError(f"{redact(self.url)}: must be redis://, rediss:// or unix://")
        if self.cluster and self.sentinel_hosts:
            raise RedisConfigError("redis_cluster and sentinel_hosts exclude each other")
        if (self.cluster or self.sentinel_hosts) and scheme == "unix":
            raise RedisConfigError(
                "a unix:// socket works only with a single Redis (no Cluster or Sentinel)")
        if self.cluster and self._db() != 0:
            raise RedisConfigError(f"{redact(self.url)}: a Redis Cluster has only db 0")
        self.sentinels()  # raises on a bad host:port
        KeySpace(self.key_prefix)

    def keys(self) -> KeySpace:
        return KeySpace(self.key_prefix)

    def master_name(self) -> str:
        """With Sentinel, the URL's host is the master (service) name."""
        return unquote(urlsplit(self.url).hostname or "") or "mymaster"

    def sentinels(self) -> list[tuple[str, int]]:
        out = []
        for item in self.sentinel_hosts:
            host, port = item, self.sentinel_port
            if item.startswith("["):  # [v6] or [v6]:port
                end = item.index("]")
                host, rest = item[1:end], item[end + 1:]
                if rest:
                    port = int(rest.lstrip(":"))
            elif ":" in item:
                host, _, text = item.rpartition(":")
                port = int(text)
            if not host or not 0 < port < 65536:
                raise RedisConfigError(f"sentinel {item!r} is not host or host:port")
            out.append((host, port))
        return out

    def describe(self) -> str:
        """For messages and logs; never shows a password."""
        if self.sentinel_hosts:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels())
            return (f"Redis master {self.master_name()!r} via Sentinel {hosts} "
                    f"(db {self._db()})")
        if self.cluster:
            return f"Redis Cluster at {redact(self.url)}"
        return f"Redis at {redact(self.url)}"

    def summary(self) -> str:
        """Where the state is, in a few words for the start-up line; never a password."""
        if self.sentinel_hosts:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels())
            return f"sentinel {self.master_name()} via {hosts}, db {self._db()}"
        if self.cluster:
            return f"cluster {redact(self.url)}"
        return redact(self.url)

    def _db(self) -> int:
        return int(parse_url(self.url).get("db", 0) or 0)

    # ------------------------------------------------------------------ clients
    def _common(self, overrides: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "decode_responses": False,
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.command_timeout,
            "socket_keepalive": True,
            # A PING before reusing a connection idle this long: finds dead peers
            # (failover, restart) before a real command is lost on them.
            "health_check_interval": 15,
        }
        kw.update(self.extra)
        kw.update(overrides)
        return kw

    def client(self, **overrides: Any) -> AnyRedis:
        """A new client (with its own connection pool); no I/O until first used."""
        client = self._client(overrides)
        _timeouts[client] = self._common(overrides)["socket_timeout"]
        return client

    def listener(self, **overrides: Any) -> AnyRedis:
        """A new client for a pub/sub listener, which finds a silent connection with PINGs
        of its own: without redis-py's health check, whose test on every message read
        asked for the running loop (a getpid() system call on Python 3.11; 9 % of a
        worker's CPU reading a burst, py-spy)."""
        return self.client(health_check_interval=0, **overrides)

    def _client(self, overrides: dict[str, Any]) -> AnyRedis:
        kw = self._common(overrides)
        if self.cluster:
            # RedisCluster retries MOVED/ASK and failovers itself; commands carry no db.
            kw.pop("health_check_interval", None)
            return RedisCluster.from_url(self.url, **kw)
        # Short, jittered retries: a restarted Redis or a promoted replica answers again
        # within a fraction of a second; a Redis that stays away fails the call quickly.
        kw.setdefault("retry", _quick_retry())
        if self.sentinel_hosts:
            url = parse_url(self.url)
            for name in ("username", "password", "db"):
                if name in url:
                    kw.setdefault(name, url[name])
            if urlsplit(self.url).scheme == "rediss":
                kw.setdefault("ssl", True)
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                self.sentinels(),
                sentinel_kwargs={
                    "socket_connect_timeout": self.connect_timeout,
                    "socket_timeout": self.connect_timeout,
                    # redis-py's default retries a dead sentinel for ~10 s; the next
                    # sentinel is the better retry
                    "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.2), 0),
                },
                **kw,
            )
            client: SentinelRedis = sentinel.master_for(self.master_name(),
                                                        redis_class=SentinelRedis)
            client.owned_sentinel = sentinel
            return client
        if urlsplit(self.url).scheme == "unix":
            kw.pop("socket_keepalive", None)  # a TCP option: refused on a Unix socket
        return Redis.from_url(self.url, **kw)


def _quick_retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2)


class SentinelRedis(Redis):
    """The master client of a Sentinel set; closing it closes the sentinel connections
    too (redis-py leaves them open)."""

    # not `sentinel`: that name is redis-py's SENTINEL command
    owned_sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            sentinel, self.owned_sentinel = self.owned_sentinel, None
            for s in sentinel.sentinels if sentinel is not None else ():
                await s.aclose()


async def connect(target: RedisTarget, client: AnyRedis | None = None) -> AnyRedis:
    """PING through `client` (or a new one); `RedisUnavailable` with a clear message when
    Redis cannot be reached, so that start-up stops (no fallback to memory)."""
    own = client is None
    client = target.client() if client is None else client
    try:
        await asyncio.wait_for(client.ping(), timeout=target.connect_timeout * 2 + 1)
    except REDIS_ERRORS as exc:
        if own:
            await close_quietly(client)
        raise RedisUnavailable(f"{target.describe()} is unreachable: {_reason(exc)}") from exc
    return client


async def close_quietly(client: AnyRedis) -> None:
    try:
        await client.aclose()
    except REDIS_ERRORS:
        pass


def subscriber(client: AnyRedis, **options: Any) -> Any:
    """A pub/sub object of `client` for a listener (`options` as redis-py's `pubsub()`)."""
    return client.pubsub(push_handler_func=_as_is, **options)


MessageRead = Callable[..., Awaitable["dict[str, Any] | None"]]
_PUBLISHED = (b"message", b"smessage")


def message_reader(pubsub: Any) -> MessageRead:
    """A subscribed (unsharded) PubSub's `get_message(ignore_subscribe_messages, timeout)`
    for a listener that reads every message of a busy channel.

    redis-py's own read goes through a retry wrapper, an execute wrapper with a closure and
    a clock reading, an `asyncio.timeout` around a parser that mostly has the reply already,
    and a message handler that looks up per-channel callbacks and reports to its
    observability hooks: most of a node's CPU for each message it reads (py-spy of a
    worker reading a burst: 45 % in redis-py's `get_message` chain, our own parse 1.5 %).
    Here a published message that hiredis has parsed is taken from its reader as it is;
    only when none is there is the socket waited on, once, with the deadline. Anything
    but a published message (subscribe confirmations, pongs) goes through redis-py's
    `handle_message` for its bookkeeping, and without hiredis, or when the connection is
    down (redis-py reconnects and subscribes again), this is redis-py's `get_message`.
    Errors are not retried here: the listeners reconnect themselves."""

    async def read(ignore_subscribe_messages: bool = False,
                   timeout: float = 0.0) -> dict[str, Any] | None:
        conn = pubsub.connection
        parser = getattr(conn, "_parser", None)
        reader = getattr(parser, "_reader", None)
        if type(parser) is not _AsyncHiredisParser or reader is None or not conn.is_connected:
            return await pubsub.get_message(  # type: ignore[no-any-return]
                ignore_subscribe_messages=ignore_subscribe_messages, timeout=timeout)
        reply = reader.gets()
        if reply is _NOT_ENOUGH_DATA:
            try:
                async with asyncio.timeout(timeout):
                    while reply is _NOT_ENOUGH_DATA:  # (a reply may come in pieces)
                        await parser.read_from_socket()  # type: ignore[no-untyped-call]
                        reply = reader.gets()
            except TimeoutError:
                return None
        if isinstance(reply, BaseException):  # an error reply, as redis-py raises it
            raise reply
        if isinstance(reply, list) and len(reply) == 3 and reply[0] in _PUBLISHED:
            return {"type": "message" if reply[0] == b"message" else "smessage",
                    "pattern": None, "channel": reply[1], "data": reply[2]}
        return await pubsub.handle_message(  # type: ignore[no-any-return]
            reply, ignore_subscribe_messages)

    return read


async def _as_is(message: Any) -> Any:
    # redis-py's own handler of a RESP3 pub/sub message writes it to a debug log, and
    # builds that line (the whole message as text) also when debug is off: 6 % of a
    # worker's CPU reading a burst (py-spy), on every node, for every message
    return message


async def close_subscription(pubsub: Any, client: AnyRedis | None) -> None:
    """End a pub/sub listener's connection and its client after a loss (both may be
    half-open; errors closing them say nothing new)."""
    if pubsub is not None:
        try:
            await pubsub.aclose()
        except REDIS_ERRORS:
            pass
    if client is not None:
        await close_quietly(client)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact(text)
