"""The interfaces of rt/backends/__init__.py (and the relay state's) proven against their
implementations by the type checker: each function below declares the Protocol and returns
the implementation, so mypy fails on any method missing or typed differently. Nothing
calls them; the module is checked, not used.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from . import (
    ClientManager,
    ControlHandler,
    EditorRegistry,
    PresenceRegistry,
    Store,
    UsageRegistry,
)
from .encryption_state import MemoryRelayState, RedisRelayState, RelayState
from .fanout import FanoutManager
from .memory import MemoryEditors, MemoryPresence, MemoryUsage
from .redis_editors import RedisEditors
from .redis_manager import RedisClientManager
from .redis_presence import RedisPresence
from .redis_store import RedisStore
from .redis_usage import RedisUsage
from .sqlite_store import SqliteStore


def stores(sqlite: SqliteStore, redis: RedisStore) -> list[Store]:
    return [sqlite, redis]


def presence_registries(memory: MemoryPresence, redis: RedisPresence) -> list[PresenceRegistry]:
    return [memory, redis]


def usage_registries(memory: MemoryUsage, redis: RedisUsage) -> list[UsageRegistry]:
    return [memory, redis]


def editor_registries(memory: MemoryEditors, redis: RedisEditors) -> list[EditorRegistry]:
    return [memory, redis]


def relay_states(memory: MemoryRelayState, redis: RedisRelayState) -> list[RelayState]:
    return [memory, redis]


def client_managers(one_node: FanoutManager, redis: RedisClientManager) -> list[ClientManager]:
    # A class built on python-socketio's (untyped) manager passes any Protocol, so each
    # member is held to its type below as well.
    for manager in (one_node, redis):
        _client_manager(manager.multi_node, manager.in_room, manager.has_room,
                        manager.on_control, manager.publish_control)
    return [one_node, redis]


def _client_manager(multi_node: bool, in_room: Callable[[str, Any], bool],
                    has_room: Callable[[str, Any], bool],
                    on_control: Callable[[str, ControlHandler], None],
                    publish_control: Callable[[str, dict[str, Any]], Awaitable[None]]) -> None:
    """The members of ClientManager, one by one."""
