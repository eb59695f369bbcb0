"""What must be recorded elsewhere when sessions act: one seam, two implementations.

The gateway tells its `Ledger` about binds, heartbeats, models in use, shared chats and read
markers; where that goes depends on who owns the users:
- `DirectoryLedger` (here): the appliance's own store (read markers); nothing else needs
  telling.
- `openwebui.ledger.OpenWebuiLedger`: open-webui's Redis pools, its read markers and its
  users' last-active times (open-webui's backend reads them).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from .auth import Identity
from .backends import Store


def people(pairs: list[tuple[str, str]]) -> list[dict]:
    """(id, name) pairs as `chat:presence` lists them: one per user, sorted by id."""
    return sorted(({"id": i, "name": n} for i, n in dict(pairs).items()),
                  key=lambda person: person["id"])


class Ledger(Protocol):
    # whether `heartbeat` records anything: when not, the heartbeat event does not call it
    # (an event that clients send every few seconds, each call a coroutine)
    records_heartbeats: bool

    async def bound(self, sid: str, identity: Identity, token: str | None) -> None: ...

    async def heartbeat(self, sid: str, identity: Identity, token: str | None) -> None: ...

    async def model_used(self, sid: str, model: str) -> None: ...

    async def chat_joined(self, sid: str, chat_id: str, joined: bool) -> None: ...

    async def chat_members(self, chat_id: str, local: list[tuple[str, str]]) -> list[dict]:
        """Users viewing a chat; `local` = (id, name) of this node's viewers."""

    async def chat_read(self, identity: Identity, token: str | None, chat_id: str) -> None: ...

    async def channel_read(self, identity: Identity, token: str | None,
                           channel_id: str) -> None: ...

    async def gone(self, sid: str) -> None: ...


class DirectoryLedger:
    records_heartbeats = False  # last-active times: PresenceService coalesces them

    def __init__(self, store: Store, chat_reads_per_user: Callable[[], int],
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.chat_reads_per_user = chat_reads_per_user
        self.clock = clock

    async def bound(self, sid: str, identity: Identity, token: str | None) -> None:
        pass

    async def heartbeat(self, sid: str, identity: Identity, token: str | None) -> None:
        pass

    async def model_used(self, sid: str, model: str) -> None:
        pass

    async def chat_joined(self, sid: str, chat_id: str, joined: bool) -> None:
        pass

    async def chat_members(self, chat_id: str, local: list[tuple[str, str]]) -> list[dict]:
        return people(local)

    async def chat_read(self, identity: Identity, token: str | None, chat_id: str) -> None:
        # bounded per user: one more chat evicts the user's oldest marker
        await self.store.set_chat_read(chat_id, identity.id, self.clock(),
                                       keep=self.chat_reads_per_user())

    async def channel_read(self, identity: Identity, token: str | None,
                           channel_id: str) -> None:
        await self.store.set_channel_read(channel_id, identity.id, self.clock())

    async def gone(self, sid: str) -> None:
        pass
