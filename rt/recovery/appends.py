"""open-webui's emits kept for recovery: appended to the log in the order they came, and
together when they came together.

The bridge reads open-webui's messages one after another (backends/socketio_bridge.py).
When it waited for each emit's append (a script call on Redis) before it read the next
message, a busy node fell behind one round trip at a time, and every message paid for a
command of its own. Here the bridge queues an emit (`put`) and goes on; one task appends
what is queued with one script call (`RecoveryState.emit_many`), and what arrives while
that call is out goes with the next. The log's order is the queue's: one call at a time.
An emit that cannot be kept (too large for the log, the store unavailable) is handed to
its `fallback` (the bridge delivers it as before, without offset), in the queue's order.
`keep` is the same for a caller that waits for the outcome. A long queue (a slow store)
makes `put` wait, so that memory stays bounded.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..backends.recovery_state import LogEntry, RecoveryState
from ..backends.sio_packets import encode_event
from ..core.errors import StoreError
from ..core.tasks import TaskGroup

log = logging.getLogger("rt.recovery")

# what an emit that cannot be kept is handed to
Fallback = Callable[[], Awaitable[None]]
MAX_BATCH = 256  # emits per script call at most (Redis runs a script without a break)
# emits queued at most before `put` waits: the bridge then reads open-webui's channels at
# the pace of the appends (Redis holds the rest, up to its pub/sub output limit)
MAX_QUEUED = 4096


class Keeper(Protocol):
    """The part of the recovery service the appends share (service.py)."""

    state: RecoveryState
    unrecorded: Counter[str]
    results: Counter[str]
    gap_pending: bool  # emits went unrecorded: a marker for everybody at the next append


def kept_form(event: str, args: list[Any], max_bytes: int
              ) -> tuple[str, tuple[bytes, ...]] | None:
    """An emit as the log keeps it: the packet without its closing bracket and its binary
    attachments; None when it cannot be kept (larger than `max_bytes` in all)."""
    encoded = encode_event([event, *args])
    blobs: tuple[bytes, ...] = ()
    if isinstance(encoded, list):  # binary: the packet, then its attachments
        encoded, blobs = encoded[0], tuple(encoded[1:])
    if not isinstance(encoded, str) or not encoded.endswith("]") \
            or len(encoded) + sum(map(len, blobs)) > max_bytes:
        return None
    return encoded[:-1], blobs


async def mark_pending_gap(keeper: Keeper) -> None:
    """The marker for everybody that emits left unrecorded owe the log (a recovery across
    it fails), before the next append. Raises StoreError as the append would."""
    if keeper.gap_pending:
        await keeper.state.mark_gap(None, [])
        keeper.gap_pending = False


class _Queued:
    __slots__ = ("event", "args", "sids", "fallback", "outcome")

    def __init__(self, event: str, args: list[Any], sids: list[str],
                 fallback: Fallback | None, outcome: asyncio.Future[bool] | None) -> None:
        self.event, self.args, self.sids = event, args, sids
        self.fallback, self.outcome = fallback, outcome


class ForeignAppends:
    def __init__(self, keeper: Keeper, tasks: TaskGroup) -> None:
        self.keeper = keeper
        self.tasks = tasks
        self._queue: list[_Queued] = []
        self._writer: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()  # set when the queue is below MAX_QUEUED
        self._room.set()

    async def put(self, event: str, args: list[Any], sids: list[str],
                  fallback: Fallback) -> None:
        """Keep an emit for exactly `sids`, after everything queued before it; returns at
        once unless MAX_QUEUED are waiting."""
        self._add(_Queued(event, args, sids, fallback, None))
        if len(self._queue) >= MAX_QUEUED:
            self._room.clear()
            await self._room.wait()

    async def keep(self, event: str, args: list[Any], sids: list[str]) -> bool:
        """`put` for a caller that waits: False when it could not be kept."""
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._add(_Queued(event, args, sids, None, outcome))
        return await outcome

    async def idle(self, timeout: float) -> bool:
        """Wait (at most `timeout`) until everything queued has been appended or handed
        to its fallback."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _add(self, item: _Queued) -> None:
        self._queue.append(item)
        self._idle.clear()
        if self._writer is None:
            self._writer = self.tasks.spawn("recovery log appends", self._write())

    async def _write(self) -> None:
        batch: list[_Queued] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                if len(self._queue) < MAX_QUEUED:
                    self._room.set()
                try:
                    kept = await self._append(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - delivered as before rather than lost
                    log.exception("appending open-webui's emits to the recovery log failed")
                    self.keeper.gap_pending = True
                    kept = [False] * len(batch)
                for item, ok in zip(batch, kept, strict=True):
                    if ok:
                        self.keeper.results["foreign_recorded"] += 1
                    if item.outcome is not None:
                        if not item.outcome.done():  # (its waiter may be gone)
                            item.outcome.set_result(ok)
                    elif not ok:
                        await self._fall_back(item)
                batch = []
        finally:
            # cancelled (the stop) with emits in hand: whoever waits hears they were not kept
            for item in batch + self._queue:
                if item.outcome is not None and not item.outcome.done():
                    item.outcome.set_result(False)
            self._queue = []
            self._writer = None
            self._room.set()
            self._idle.set()

    async def _fall_back(self, item: _Queued) -> None:
        if item.fallback is None:
            return
        try:
            await item.fallback()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one delivery must not stop the appends
            log.exception("delivering an emit that was not kept failed")

    async def _append(self, batch: list[_Queued]) -> list[bool]:
        """Append a batch in its order; one that cannot be kept is False. An emit too large
        to keep leaves a marker where it was (a recovery across it fails); the store being
        unavailable leaves the ones it would have taken unkept, and a marker at the next
        append."""
        keeper = self.keeper
        state = keeper.state
        kept = [False] * len(batch)
        run: list[tuple[int, LogEntry]] = []  # the appends since the last marker

        async def flush() -> None:
            if not run:
                return
            try:
                await mark_pending_gap(keeper)
                await state.emit_many([entry for _, entry in run])
            except StoreError as exc:
                keeper.gap_pending = True
                keeper.unrecorded["unavailable"] += len(run)
                log.warning("open-webui's emits not recorded for recovery: %s", exc)
            else:
                for index, _ in run:
                    kept[index] = True
            run.clear()

        for index, item in enumerate(batch):
            form = kept_form(item.event, item.args, state.bounds.max_packet_bytes)
            if form is not None:
                run.append((index, (item.sids, [], *form)))
                continue
            await flush()
            keeper.unrecorded["too_large"] += 1
            try:
                await state.mark_gap(item.sids, [])
            except StoreError:
                keeper.gap_pending = True
        await flush()
        return kept
