"""The ledger of an open-webui deployment: its Redis pools, read markers, last-active times.

Heartbeats refresh the session pool entry and, at most once per `touch_interval` per user,
ask open-webui who the token is: any authenticated request refreshes the user's
last-active time there (open-webui's own heartbeat handler writes it to its database), and
the answer refreshes the cached identity. Without Redis (single node) there are no pools to
keep: open-webui's backend cannot reach this appliance's sessions then anyway.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from ..auth import Identity
from ..ledger import people
from .identities import OpenWebuiIdentities
from .pools import OpenWebuiPools
from .writeback import ReadMarkers

MAX_TOUCHED = 100_000  # users remembered for the last-active throttle before pruning


class OpenWebuiLedger:
    records_heartbeats = True  # open-webui's pools and its users' last-active times

    def __init__(self, identities: OpenWebuiIdentities, markers: ReadMarkers,
                 pools: OpenWebuiPools | None, touch_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.identities = identities
        self.markers = markers
        self.pools = pools
        self.touch_interval = touch_interval
        self.clock = clock
        self._touched: dict[str, float] = {}  # user → when open-webui last heard of it

    async def bound(self, sid: str, identity: Identity, token: str | None) -> None:
        self._touched.setdefault(identity.id, self.clock())
        if self.pools is not None and token:
            await self.pools.bind(sid, await self.identities.record(token, identity))

    async def heartbeat(self, sid: str, identity: Identity, token: str | None) -> None:
        if self.pools is not None:
            await self.pools.heartbeat(sid)
        now = self.clock()
        if token and now - self._touched.get(identity.id, 0.0) >= self.touch_interval:
            self._touched[identity.id] = now
            if len(self._touched) > MAX_TOUCHED:  # bounded: forget who was heard long ago
                self._touched = {u: at for u, at in self._touched.items()
                                 if now - at < self.touch_interval}
            await self.identities.touch(token)

    async def model_used(self, sid: str, model: str) -> None:
        if self.pools is not None:
            await self.pools.use(sid, model)

    async def chat_joined(self, sid: str, chat_id: str, joined: bool) -> None:
        if self.pools is not None:
            await self.pools.set_chat(sid, chat_id, joined)

    async def chat_members(self, chat_id: str, local: list[tuple[str, str]]) -> list[dict]:
        if self.pools is None:
            return people(local)
        return await self.pools.chat_members(chat_id)

    async def chat_read(self, identity: Identity, token: str | None, chat_id: str) -> None:
        if token:
            self.markers.mark(identity.id, token, "events:chat", chat_id,
                              {"chat_id": chat_id, "data": {"type": "last_read_at"}})

    async def channel_read(self, identity: Identity, token: str | None,
                           channel_id: str) -> None:
        if token:
            self.markers.mark(identity.id, token, "events:channel", channel_id,
                              {"channel_id": channel_id, "data": {"type": "last_read_at"}})

    async def gone(self, sid: str) -> None:
        if self.pools is not None:
            await self.pools.remove(sid)

    def forget_user(self, user_id: str) -> None:
        self._touched.pop(user_id, None)
