"""The chat streaming relay's service: starts, tracks, limits and cancels the streams of
this node (each one a `RelayStream`, stream.py)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..auth import Identity
from ..backends import Store
from ..core.tasks import TaskGroup
from ..metrics import Figure
from .request import ChatRequest, Outcome, RelayRefused
from .stream import RelayStream

log = logging.getLogger("rt.relay")


# ---------------------------------------------------------------------- the service
@dataclass
class RelayCounters:
    started: int = 0
    done: int = 0
    cancelled: int = 0
    error: int = 0
    rejected: int = 0


class RelayService:
    """Starts, tracks, limits and cancels relayed streams. `settings()` returns the
    `[upstream]` section in force (read per stream: it can change on reload)."""

    def __init__(self, emitter, store: Store, settings: Callable[[], Any]) -> None:
        self.emitter = emitter
        self.store = store
        self.settings = settings
        self._streams: dict[str, RelayStream] = {}  # message id → stream
        self._per_user: dict[str, int] = {}
        self._stopping = False
        self.counters = RelayCounters()
        self.tasks = TaskGroup()  # the streams' runs

    # ------------------------------------------------------------------ streams
    async def start(self, identity: Identity, request: ChatRequest,
                    listen: bool = False) -> RelayStream:
        """Start relaying; raises RelayRefused (503 not configured, 409 message id in use,
        429 over a limit). With `listen`, `stream.output` carries the caller's stream."""
        s = self.settings()
        if self._stopping:
            raise RelayRefused("unavailable", "the appliance is shutting down", 503)
        if not s.base_url:
            raise RelayRefused("unavailable", "the chat relay is not configured "
                               "([upstream] base_url is empty)", 503)
        stored = await self.store.get_chat_message(request.chat_id, request.message_id)
        if stored is not None and stored.user_id != identity.id:
            raise RelayRefused("conflict", "this message id belongs to another user's message",
                               409)
        # No await from here on: the checks and the registration are one step.
        running = self._streams.get(request.message_id)
        if running is not None:
            raise RelayRefused("conflict", "a stream for this message id is already running",
                               409)
        if self._per_user.get(identity.id, 0) >= s.max_streams_per_user:
            self.counters.rejected += 1
            raise RelayRefused("rate_limited", f"at most {s.max_streams_per_user} concurrent "
                               "streams per user; wait for one to end", 429)
        if len(self._streams) >= s.max_streams:
            self.counters.rejected += 1
            raise RelayRefused("rate_limited", f"the relay is at its limit of {s.max_streams} "
                               "concurrent streams; try again shortly", 429)
        stream = RelayStream(self, identity, request, s, listen)
        self._streams[request.message_id] = stream
        self._per_user[identity.id] = self._per_user.get(identity.id, 0) + 1
        self.counters.started += 1
        stream.task = self.tasks.spawn(f"relay {request.message_id}", stream.run())
        return stream

    def get(self, message_id: str) -> RelayStream | None:
        return self._streams.get(message_id)

    async def cancel(self, message_id: str, user_id: str | None = None,
                     reason: str = "cancelled", wait: float = 5.0) -> Outcome | None:
        """Cancel a running stream (only the owner's when `user_id` is given) and wait until
        it has ended; its outcome, or None when no such stream runs here."""
        stream = self._streams.get(message_id)
        if stream is None or (user_id is not None and stream.user_id != user_id):
            return None
        stream.cancel(reason)
        try:
            await asyncio.wait_for(stream.finished.wait(), wait)
        except TimeoutError:
            pass
        return stream.outcome

    def _forget(self, stream: RelayStream) -> None:
        if self._streams.get(stream.message_id) is stream:
            del self._streams[stream.message_id]
            left = self._per_user.get(stream.user_id, 0) - 1
            if left > 0:
                self._per_user[stream.user_id] = left
            else:
                self._per_user.pop(stream.user_id, None)

    def _count(self, status: str) -> None:
        setattr(self.counters, status, getattr(self.counters, status) + 1)

    # ------------------------------------------------------------------ metrics
    def figures(self) -> Iterator[Figure]:
        yield Figure("rt_relay_streams_active", "Chat relay streams running on this node",
                     len(self._streams))

    def active_count(self) -> int:
        return len(self._streams)

    def active_of(self, user_id: str) -> int:
        return self._per_user.get(user_id, 0)

    def metrics(self) -> dict[str, int]:
        c = self.counters
        return {"active": len(self._streams), "started": c.started, "done": c.done,
                "cancelled": c.cancelled, "error": c.error, "rejected": c.rejected}

    # ------------------------------------------------------------------ lifecycle
    async def stop(self, timeout: float = 5.0) -> None:
        """Refuse new streams, cancel the running ones (each is stored and its tabs told),
        and wait for them under `timeout`; stragglers are stopped hard."""
        self._stopping = True
        streams = list(self._streams.values())
        for stream in streams:
            stream.cancel("the appliance is shutting down")
        tasks = [s.task for s in streams if s.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
