"""Background loops that survive their own errors."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .errors import StoreError

log = logging.getLogger("rt.app")


async def every(name: str, interval: float, step: Callable[[], Awaitable[None]],
                max_backoff: float = 30.0) -> None:
    """Run `step` every `interval` seconds until cancelled. A failing step is logged and
    retried with exponential backoff; cancellation always propagates."""
    delay = interval
    while True:
        await asyncio.sleep(delay)
        try:
            await step()
            delay = interval
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            delay = min(max(delay * 2, interval), max_backoff)
            if isinstance(exc, StoreError):  # an outage, not a bug: one line per retry
                log.warning("%s failed: %s; retrying in %.1f s", name, exc, delay)
            else:
                log.exception("%s failed; retrying in %.1f s", name, delay)
        if cancel_swallowed():
            raise asyncio.CancelledError


def cancel_swallowed() -> bool:
    """Whether the current task was asked to stop although no CancelledError reached it:
    Python 3.11's asyncio.wait_for drops a cancel that lands as its inner call finishes,
    and redis-py wraps every send in one. Without this check a loop so cancelled runs on
    and the stop that waits for it never ends. (The request is still counted.)"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a task of ours and wait until it has ended (its cancellation swallowed here,
    a cancellation of the caller still propagates)."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class TaskGroup:
    """Named long-running tasks of the app, cancelled together at stop."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task] = []

    def start(self, name: str, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.append(task)
        return task

    def spawn(self, name: str, coro) -> asyncio.Task:
        """A short task (a piece of work, then done): dropped from the group when it ends,
        its failure logged; cancelled at stop like the others if still running."""
        task = self.start(name, coro)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", task.get_name(), task.exception())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
