"""The one place that picks the backend, from `[state] manager` (WEBSOCKET_MANAGER)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import socketio

from . import PresenceRegistry, Store, UsageRegistry
from .memory import MemoryPresence, MemoryUsage


class BackendError(Exception):
    """The configured backend cannot be used (start-up stops; there is no fallback)."""


@dataclass
class Backend:
    name: str
    store: Store
    presence: PresenceRegistry
    usage: UsageRegistry
    client_manager: socketio.AsyncManager

    async def start(self) -> None:
        await self.store.open()

    async def stop(self) -> None:
        await self.store.close()

    async def ready(self) -> None:
        await self.store.ping()


def build_backend(settings) -> Backend:
    manager = settings.state.manager
    if manager == "":
        from .sqlite_store import SqliteStore

        return Backend(
            name="memory",
            store=SqliteStore(os.path.join(settings.state.data_dir, "rt-appliance.sqlite3")),
            presence=MemoryPresence(),
            usage=MemoryUsage(),
            client_manager=socketio.AsyncManager(),
        )
    if manager == "redis":
        raise BackendError(
            "WEBSOCKET_MANAGER=redis (cluster mode) is not available in this version; "
            "unset it to run a single node on embedded state")
    raise BackendError(f"unknown state manager {manager!r}")
