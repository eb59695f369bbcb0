"""Which models are in use: entries expire `ttl` seconds after their last `usage` event.

The set is broadcast as `usage` only when it changes (the original broadcast on every
event), from the event itself and from the sweep that expires stale entries.
"""
from __future__ import annotations

import time
from typing import Callable

from .backends import UsageRegistry
from .emitter import Emitter


class UsageService:
    def __init__(self, registry: UsageRegistry, emitter: Emitter, ttl: float,
                 broadcast: bool, clock: Callable[[], float] = time.time):
        self.registry = registry
        self.emitter = emitter
        self.ttl = ttl
        self.broadcast = broadcast
        self.clock = clock

    async def touch(self, model: str, sid: str) -> None:
        if await self.registry.touch(model, sid, self.clock()):
            await self._changed()

    async def drop(self, sid: str) -> None:
        if await self.registry.drop_sid(sid):
            await self._changed()

    async def sweep(self) -> None:
        if await self.registry.expire(self.clock() - self.ttl):
            await self._changed()

    async def models(self) -> list[str]:
        return await self.registry.models()

    async def _changed(self) -> None:
        if self.broadcast:
            await self.emitter.emit("usage", {"models": await self.models()}, everyone=True)
