"""Typing indicators at a bounded rate, coalesced silently.

open-webui's editor sends one typing event per keystroke. Above the rate a refusal would be
noise (the user did nothing wrong, and open-webui answers none): the newest state is kept
and sent when the session's bucket allows it, so the room sees at most `rate` events per
second per session and room, and always the last state (typing stopped included). The rate
and the count of coalesced events are the `Limits`' (`rt_limited_total{limit="typing"}`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .core.tasks import TaskGroup
from .limits import Limits

log = logging.getLogger("rt.conn")

Send = Callable[[], Awaitable[Any]]


class TypingGate:
    def __init__(self, limits: Limits, tasks: TaskGroup):
        self.limits = limits
        self.tasks = tasks  # the delayed sends
        self._waiting: dict[tuple[str, str], Send] = {}  # (sid, room) → newest send
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}

    async def offer(self, sid: str, room: str, send: Send) -> None:
        key = (sid, room)
        if self.limits.typing_allows(sid, waiting=key in self._timers):
            await send()
            return
        self._waiting[key] = send
        if key not in self._timers:
            self._schedule(key)

    def _schedule(self, key: tuple[str, str]) -> None:
        def start() -> None:
            self.tasks.spawn("typing release", self._release(key))

        delay = self.limits.typing_interval()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, start)

    async def _release(self, key: tuple[str, str]) -> None:
        self._timers.pop(key, None)
        send = self._waiting.pop(key, None)
        if send is None:
            return
        if not self.limits.typing_buckets.allow(key[0]):
            self._waiting[key] = send  # still over: wait one more interval
            self._schedule(key)
            return
        try:
            await send()
        except Exception:
            log.exception("delayed typing event for %s failed", key[1])

    def forget(self, sid: str) -> None:
        for key in [k for k in self._timers if k[0] == sid]:
            self._timers.pop(key).cancel()
            self._waiting.pop(key, None)
