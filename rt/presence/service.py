"""Who is online, and when each user was last active.

Heartbeats arrive every few seconds from every tab; writing each to the store would cost one
durable write per beat. They are coalesced here instead: the newest time per user is kept in
memory and written in one batch every `flush_interval` seconds, and at stop.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..auth import Identity
from ..backends import PresenceRegistry, Store

log = logging.getLogger("rt.app")


class PresenceService:
    def __init__(self, registry: PresenceRegistry, store: Store,
                 clock: Callable[[], float] = time.time):
        self.registry = registry
        self.store = store
        self.clock = clock
        self._pending: dict[str, float] = {}

    async def connected(self, sid: str, identity: Identity) -> None:
        await self.registry.add(sid, identity.id)
        self.heartbeat(identity.id)

    async def disconnected(self, sid: str) -> str | None:
        return await self.registry.remove(sid)

    def heartbeat(self, user_id: str) -> None:
        self._pending[user_id] = self.clock()

    async def flush(self) -> int:
        """Write the coalesced last-active times; on failure they stay pending."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        try:
            await self.store.set_last_active(batch)
        except BaseException:
            for user_id, at in batch.items():  # keep whichever is newer
                if at > self._pending.get(user_id, 0.0):
                    self._pending[user_id] = at
            raise
        return len(batch)

    async def last_active(self, user_id: str, stored: float | None) -> float | None:
        pending = self._pending.get(user_id)
        if pending is None:
            return stored
        return pending if stored is None else max(pending, stored)

    async def user_presence(self, user_id: str) -> dict:
        user = await self.store.get_user(user_id)
        sessions = await self.registry.sessions_of(user_id)
        return {
            "id": user_id,
            "sessions": len(sessions),
            "online": bool(sessions),
            "last_active_at": await self.last_active(
                user_id, user.last_active_at if user else None),
        }

    async def snapshot(self) -> list[dict]:
        users = await self.registry.users()
        out = []
        for user_id, count in sorted(users.items()):
            user = await self.store.get_user(user_id)
            out.append({
                "id": user_id,
                "sessions": count,
                "last_active_at": await self.last_active(
                    user_id, user.last_active_at if user else None),
            })
        return out
