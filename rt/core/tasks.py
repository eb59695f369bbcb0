"""The one task helper (TaskGroup) and background loops that survive their own errors."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .errors import StoreError

log = logging.getLogger("rt.app")


async def every(name: str, interval: float, step: Callable[[], Awaitable[object]],
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


def cancel_swallowed(task: asyncio.Task[Any] | None = None) -> bool:
    """Whether the current task was asked to stop although no CancelledError reached it:
    Python 3.11's asyncio.wait_for drops a cancel that lands as its inner call finishes,
    and redis-py wraps every send in one. Without this check a loop so cancelled runs on
    and the stop that waits for it never ends. (The request is still counted.) A loop that
    asks once per message passes its own task: finding the current one costs a getpid()
    system call on Python 3.11."""
    task = task or asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task of ours and wait until it has ended (its cancellation swallowed here,
    a cancellation of the caller still propagates)."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class TaskGroup:
    """The one way the appliance keeps a task alive: every task is named, referenced until
    it ends (asyncio keeps only weak references), its failure logged, and cancelled with
    the group at stop. `start` is for loops that run until the stop, `spawn` for a piece
    of work that ends by itself; both are dropped from the group when they end."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A short task (a piece of work, then done)."""
        return self.start(name, coro)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", task.get_name(), task.exception(),
                      exc_info=task.exception())

    async def settle(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the running tasks to end by themselves."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
