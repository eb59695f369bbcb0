"""Which models are in use: entries expire `ttl` seconds after their last `usage` event.

The set is broadcast as `usage` only when it changes (the original broadcast on every
event), from the event itself and from the sweep that expires stale entries. Broadcasts
are coalesced: at most one per BROADCAST_INTERVAL, the first change after a quiet spell
at once (leading edge), later ones together at the end of the interval with the set as it
is then (trailing edge). A storm of changes costs every client one message per interval,
and the last message always carries the final set.

The registry decides the clock (`UsageRegistry.clock`): monotonic on one node, wall clock
when nodes share the set in Redis.

Redis mode: every node broadcasts the changes it made (its touches, drops and sweeps), each
coalesced on its own. After publishing, a node re-reads the cluster-wide version of the set;
when another node changed it meanwhile, this node sends the newer set at its next interval
too, so the last message published carries the final set, whoever sent the ones before.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..backends import UsageRegistry
from ..core.tasks import TaskGroup
from ..emitter import Emitter

log = logging.getLogger("rt.app")

# Seconds between two `usage` broadcasts of a node. One second: open-webui tabs refresh
# their usage entry every second and entries live three (usage_ttl), so the list a client
# shows is never more than a refresh behind, while a client inventing model names (each a
# change) makes every client receive one message a second instead of one per event.
BROADCAST_INTERVAL = 1.0
# Longest wait before retrying a broadcast whose read of the set failed (store down).
MAX_RETRY = 10.0


class UsageService:
    def __init__(self, registry: UsageRegistry, emitter: Emitter, ttl: float,
                 broadcast: bool, interval: float = BROADCAST_INTERVAL,
                 timer: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.emitter = emitter
        self.ttl = ttl
        self.broadcast = broadcast
        self.interval = interval
        self.timer = timer  # paces broadcasts (node-local, so always monotonic)
        self.broadcasts = 0  # `usage` messages sent by this node
        self._dirty = False  # a change not broadcast yet
        self.tasks = TaskGroup()  # the broadcaster, while changes are pending
        self._task: asyncio.Task[None] | None = None
        self._next_at = -float("inf")  # timer() before which no broadcast goes out
        self._sent: tuple[int, list[str]] | None = None  # (version, models) last sent

    @property
    def clock(self) -> Callable[[], float]:
        return self.registry.clock

    async def touch(self, model: str, sid: str, max_per_sid: int | None = None,
                    max_models: int | None = None) -> None:
        """Raises UsageFull (nothing changed) when a cap refuses a new entry."""
        if await self.registry.touch(model, sid, self.clock(), max_per_sid, max_models):
            self._changed()

    async def drop(self, sid: str) -> None:
        if await self.registry.drop_sid(sid):
            self._changed()

    async def sweep(self) -> None:
        if await self.registry.expire(self.clock() - self.ttl):
            self._changed()

    async def models(self) -> list[str]:
        return await self.registry.models()

    def _changed(self) -> None:
        if not self.broadcast:
            return
        self._dirty = True
        if self._task is None:
            self._task = self.tasks.spawn("usage broadcast", self._broadcaster())

    async def _broadcaster(self) -> None:
        """Runs while changes are pending; one broadcast per interval at most."""
        retry = self.interval
        try:
            while self._dirty:
                delay = self._next_at - self.timer()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._dirty = False
                try:
                    await self._send()
                    retry = self.interval
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._dirty = True  # the change is still to be told
                    self._next_at = self.timer() + retry
                    log.warning("usage broadcast failed (%s); retrying in %.1f s", exc, retry)
                    retry = min(retry * 2, MAX_RETRY)
        finally:
            self._task = None

    async def _send(self) -> None:
        version, models = await self.registry.snapshot()
        if self._sent is not None and (
                version == self._sent[0]
                # one node: nobody else broadcasts, so an equal set is what clients have
                or (not self.registry.shared and models == self._sent[1])):
            return  # the changes cancelled out, or were sent already
        self._next_at = self.timer() + self.interval
        await self.emitter.emit("usage", {"models": models}, everyone=True)
        self.broadcasts += 1
        self._sent = (version, models)
        if self.registry.shared and await self.registry.version() != version:
            self._dirty = True  # changed meanwhile, maybe by another node: send that too

    async def close(self) -> None:
        """Stop a pending broadcast (at shutdown: the clients are going anyway)."""
        await self.tasks.stop()
