"""The one place that picks the backend, from `[state] manager` (WEBSOCKET_MANAGER).

A Backend bundles what differs between one node on embedded state and several nodes on
Redis: the store, the presence and usage registries, python-socketio's client manager, and
the background work a backend needs (Redis: the node heartbeat and the sweep that announces
the sessions of dead nodes). The rest of the appliance never asks which one it runs on.
"""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import socketio

from . import EditorRegistry, PresenceRegistry, Store, UsageRegistry
from .encryption_state import MemoryRelayState, RelayState
from .fanout import FanoutManager
from .memory import MemoryEditors, MemoryPresence, MemoryUsage

if TYPE_CHECKING:
    from .socketio_bridge import SocketioBridge


class BackendError(Exception):
    """The configured backend cannot be used (start-up stops; there is no fallback)."""


@dataclass
class Loop:
    """Background work of a backend: `step` every `interval` seconds."""

    name: str
    interval: float
    step: Callable[[], Awaitable[None]]


@dataclass
class Backend:
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
    redis: Any = None

    async def start(self) -> None:
        await self.store.open()

    async def stop(self) -> None:
        await self.store.close()

    async def ready(self) -> None:
        await self.store.ping()

    async def dead_sessions(self) -> list[tuple[str, str]]:
        """(sid, user id) of sessions whose node died, each reported to one node only."""
        return []

    async def nodes(self) -> list[str]:
        """The live nodes of the deployment (this one alone on embedded state)."""
        return [self.node_id]


class RedisBackend(Backend):
    async def start(self) -> None:
        await self.store.open()
        # listen for cross-node messages now, not at the first client: a node without
        # clients must still answer `call` acks and room changes for other nodes
        self.client_manager.initialize()
        if self.bridge is not None:
            await self.bridge.start()
        await self.presence.heartbeat()

    async def stop(self) -> None:
        # retire this node's sessions, stop listening, then close the shared client
        try:
            await self.presence.retire()
        finally:
            try:
                if self.bridge is not None:
                    await self.bridge.close()
                await self.client_manager.close()
            finally:
                await self.store.close()

    async def ready(self) -> None:
        await self.store.ping()
        await self.client_manager.ready()
        if self.bridge is not None:
            await self.bridge.ready()

    async def dead_sessions(self) -> list[tuple[str, str]]:
        return await self.presence.dead_sessions()

    async def nodes(self) -> list[str]:
        return await self.presence.nodes()


def build_backend(settings) -> Backend:
    manager = settings.state.manager
    if manager == "":
        from .sqlite_store import SqliteStore

        return Backend(
            name="memory",
            store=SqliteStore(os.path.join(settings.state.data_dir, "rt-appliance.sqlite3")),
            presence=MemoryPresence(),
            usage=MemoryUsage(),
            client_manager=FanoutManager(),
        )
    if manager == "redis":
        return build_redis_backend(settings)
    raise BackendError(f"unknown state manager {manager!r}")


def build_redis_backend(settings, target=None) -> RedisBackend:
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
    openwebui, bridge = settings.openwebui, None
    if openwebui.pubsub:
        try:
            bridge = SocketioBridge(manager, target, channel=openwebui.pubsub_channel,
                                    room_channels=openwebui.room_channels)
        except ValueError as exc:
            raise BackendError(f"[openwebui] pubsub_channel: {exc}") from None
        if openwebui.mirror_emits:
            manager.mirror = bridge.mirror
    return RedisBackend(
        name="redis",
        store=RedisStore(client, keys, where=where),
        presence=presence,
        usage=RedisUsage(client, keys, where=where),
        client_manager=manager,
        bridge=bridge,
        encryption=RedisRelayState(client, target.key_prefix, where=where),
        editors=RedisEditors(client, keys, presence, where=where),
        node_id=presence.node_id,
        loops=[Loop("presence heartbeat", presence.heartbeat_interval, presence.heartbeat)],
        dead_session_interval=min(5.0, settings.state.node_ttl / 4),
        redis=client,
    )
