"""The one place that picks the backend, from `[state] manager` (WEBSOCKET_MANAGER).

A Backend bundles what differs between one node on embedded state and several nodes on
Redis: the store, the presence and usage registries, python-socketio's client manager, and
the background work a backend needs (Redis: the node heartbeat and the sweep that announces
the sessions of dead nodes). The rest of the appliance never asks which one it runs on.

Two backends: "sqlite" (one node: the SQLite store, registries in process memory; the
empty `manager` or "sqlite") and "redis" (every node shares Redis). `description` is the
start-up line's part about the state.
"""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import socketio

from . import EditorRegistry, PresenceRegistry, Store, UsageRegistry
from .encryption_state import MemoryRelayState, RelayState
from .fanout import FanoutManager
from .memory import MemoryEditors, MemoryPresence, MemoryUsage

if TYPE_CHECKING:
    from .redis_conn import AnyRedis, RedisTarget
    from .redis_manager import RedisClientManager
    from .redis_presence import RedisPresence
    from .socketio_bridge import SocketioBridge

# `[state] manager` values of embedded state: one node, SQLite in data_dir
EMBEDDED = ("", "sqlite")
SQLITE_FILE = "rt-appliance.sqlite3"
# seconds between looks for sessions of dead nodes: how long a dead node's sessions may
# outlive its lease
DEAD_SESSION_INTERVAL = 1.0


class BackendError(Exception):
    """The configured backend cannot be used (start-up stops; there is no fallback)."""


class StateConfig(Protocol):
    """What the factory reads of `[state]` (rt.config's StateSettings; not imported: the
    backends sit below the configuration)."""

    @property
    def manager(self) -> str: ...
    @property
    def data_dir(self) -> str: ...
    @property
    def redis_url(self) -> str: ...
    @property
    def redis_cluster(self) -> bool: ...
    @property
    def sentinel_hosts(self) -> tuple[str, ...]: ...
    @property
    def sentinel_port(self) -> int: ...
    @property
    def key_prefix(self) -> str: ...
    @property
    def redis_timeout(self) -> float: ...
    @property
    def node_ttl(self) -> float: ...


class OpenWebuiConfig(Protocol):
    """What the factory reads of `[openwebui]`."""

    @property
    def pubsub(self) -> bool: ...
    @property
    def pubsub_channel(self) -> str: ...
    @property
    def room_channels(self) -> bool: ...
    @property
    def mirror_emits(self) -> bool: ...


class BackendSettings(Protocol):
    @property
    def state(self) -> StateConfig: ...
    @property
    def openwebui(self) -> OpenWebuiConfig: ...


@dataclass
class Loop:
    """Background work of a backend: `step` every `interval` seconds."""

    name: str
    interval: float
    step: Callable[[], Awaitable[None]]


@dataclass
class Backend:
    # "sqlite" (one node: the SQLite store and in-process registries) or "redis"
    name: str
    store: Store
    presence: PresenceRegistry
    usage: UsageRegistry
    client_manager: socketio.AsyncManager
    editors: EditorRegistry = field(default_factory=MemoryEditors)
    node_id: str = ""
    loops: list[Loop] = field(default_factory=list)
    # how often to look for sessions of nodes that died (None: there are no other nodes)
    dead_session_interval: float | None = None
    # where the encrypted-channel relay keeps its state (open-webui's keys in Redis mode)
    encryption: RelayState = field(default_factory=MemoryRelayState)
    # python-socketio's pub/sub with open-webui's backend (Redis mode, [openwebui] pubsub);
    # its `stats` are the counters to export
    bridge: SocketioBridge | None = None
    # the Redis client of the deployment (None on embedded state), shared with services
    # that keep keys another program reads (open-webui's pools and revocation markers)
    redis: AnyRedis | None = None
    # the Redis the appliance's own nodes share (the deployment's, or the private broker
    # of the workers of one box; None for one process): connection-state recovery
    nodes_redis: AnyRedis | None = None
    # one line for the start-up message: the name and where the state is, without
    # credentials ("sqlite: ./data/rt-appliance.sqlite3", "redis: redis://host:6379/0")
    description: str = ""

    def __post_init__(self) -> None:
        if not self.description:
            self.description = self.name

    async def start(self) -> None:
        await self.store.open()

    async def stop(self) -> None:
        await self.store.close()

    async def ready(self) -> None:
        """Raise StoreError when the node cannot serve. Reads only: probed every few
        seconds (readyz, metrics, the status page)."""
        await self.store.ping()

    async def dead_sessions(self) -> list[tuple[str, str]]:
        """(sid, user id) of sessions whose node died, each reported to one node only."""
        return []

    async def nodes(self) -> list[str]:
        """The live nodes of the deployment (this one alone on embedded state)."""
        return [self.node_id]


@dataclass
class RedisBackend(Backend):
    # the same objects as `presence` and `client_manager`, with what only Redis has
    # (leases, pub/sub); set by build_redis_backend
    leases: RedisPresence | None = None
    cluster: RedisClientManager | None = None

    def _parts(self) -> tuple[RedisPresence, RedisClientManager]:
        assert self.leases is not None and self.cluster is not None, "built without leases"
        return self.leases, self.cluster

    async def start(self) -> None:
        leases, cluster = self._parts()
        await self.store.open()
        # listen for cross-node messages now, not at the first client: a node without
        # clients must still answer `call` acks and room changes for other nodes
        cluster.initialize()
        if self.bridge is not None:
            await self.bridge.start()
        await leases.heartbeat()

    async def stop(self) -> None:
        leases, cluster = self._parts()
        # retire this node's sessions, stop listening, then close the shared client
        try:
            await leases.retire()
        finally:
            try:
                if self.bridge is not None:
                    await self.bridge.close()
                await cluster.close()
            finally:
                await self.store.close()

    async def ready(self) -> None:
        # PING and two flags: nothing written
        await self.store.ping()
        await self._parts()[1].ready()
        if self.bridge is not None:
            await self.bridge.ready()

    async def dead_sessions(self) -> list[tuple[str, str]]:
        return await self._parts()[0].dead_sessions()

    async def nodes(self) -> list[str]:
        return await self._parts()[0].nodes()


def build_backend(settings: BackendSettings, broker: str = "") -> Backend:
    """`broker`: the Unix socket of the broker the workers of one box share ([server]
    workers on embedded state), empty for one process."""
    manager = settings.state.manager
    if manager in EMBEDDED:
        from .sqlite_store import SqliteStore

        path = os.path.join(settings.state.data_dir, SQLITE_FILE)
        if broker:
            return build_workers_backend(settings, SqliteStore(path), broker,
                                         f"sqlite: {path}, workers sharing a broker")
        return Backend(
            name="sqlite",
            store=SqliteStore(path),
            presence=MemoryPresence(),
            usage=MemoryUsage(),
            client_manager=FanoutManager(),
            description=f"sqlite: {path}",
        )
    if manager == "redis":
        return build_redis_backend(settings)
    raise BackendError(f"unknown state manager {manager!r}")


def build_workers_backend(settings: BackendSettings, store: Store, broker: str,
                          description: str) -> RedisBackend:
    """The workers of one box on embedded state: each a node of the Redis backend on the
    private broker (rt.workers.broker), for everything nodes share, and the SQLite file
    for what is stored. Nothing in the broker is open-webui's: no pub/sub bridge, and no
    client for the services that keep keys open-webui reads (`redis` stays None)."""
    from .redis_conn import RedisTarget

    state = settings.state
    target = RedisTarget(url=f"unix://{broker}", key_prefix=state.key_prefix,
                         command_timeout=state.redis_timeout)
    backend = build_redis_backend(settings, target, bridge=False)
    backend.name, backend.store, backend.description = "sqlite", store, description
    backend.redis = None
    return backend


def build_redis_backend(settings: BackendSettings, target: RedisTarget | None = None,
                        bridge: bool = True) -> RedisBackend:
    from .encryption_state import RedisRelayState
    from .redis_conn import RedisConfigError, RedisTarget
    from .redis_editors import RedisEditors
    from .redis_manager import RedisClientManager
    from .redis_presence import RedisPresence
    from .redis_store import RedisStore
    from .redis_usage import RedisUsage
    from .socketio_bridge import SocketioBridge

    try:
        target = target or RedisTarget.from_settings(settings.state)
    except RedisConfigError as exc:
        raise BackendError(str(exc)) from None
    client = target.client()  # one connection pool for store, presence and usage
    keys, where = target.keys(), target.describe()
    presence = RedisPresence(client, keys, node_ttl=settings.state.node_ttl, where=where)
    manager = RedisClientManager(target)
    openwebui, pubsub = settings.openwebui, None
    if bridge and openwebui.pubsub:
        try:
            pubsub = SocketioBridge(manager, target, channel=openwebui.pubsub_channel,
                                    room_channels=openwebui.room_channels)
        except ValueError as exc:
            raise BackendError(f"[openwebui] pubsub_channel: {exc}") from None
        if openwebui.mirror_emits:
            manager.mirror = pubsub.mirror
    return RedisBackend(
        name="redis",
        store=RedisStore(client, keys, where=where),
        presence=presence,
        usage=RedisUsage(client, keys, where=where),
        client_manager=manager,
        bridge=pubsub,
        encryption=RedisRelayState(client, target.key_prefix, where=where),
        editors=RedisEditors(client, keys, presence, where=where),
        node_id=presence.node_id,
        # the beat renews this node's lease and learns the others'; `dead_sessions` asks
        # Redis only when a lease may have passed, so looking every second costs nothing
        loops=[Loop("presence heartbeat", presence.heartbeat_interval, presence.heartbeat)],
        dead_session_interval=min(DEAD_SESSION_INTERVAL, presence.heartbeat_interval),
        redis=client,
        nodes_redis=client,
        description=f"redis: {target.summary()}",
        leases=presence,
        cluster=manager,
    )

