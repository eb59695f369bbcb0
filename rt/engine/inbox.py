"""A session's inbound messages on their way to the message handler.

They are handed over strictly in order by a short-lived consumer task, so a slow handler (a
durable write) neither reorders a client's events nor stalls reading its pongs. The
consumer hands over a bounded batch per turn of the event loop and then yields: a client
that sent thousands of messages at once gets one batch per turn, like every other busy
session, instead of holding the loop until its backlog is worked off.
"""
from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final, Protocol

from .contracts import SessionHost
from .inflow import TURN_MESSAGES, TURN_SECONDS

log = logging.getLogger("rt.conn")


class Consumer(Protocol):
    """The session an inbox belongs to."""

    sid: str
    server: SessionHost
    closed: bool
    close_reason: str | None

    def close(self, reason: str = ..., notify_client: bool = ...,
              drop_pending: bool = ..., ws_close: tuple[int, str, bool] | None = ...
              ) -> None: ...

    def cork(self) -> Corked | None: ...

    @property
    def gate(self) -> Gate: ...


class Gate(Protocol):
    """What decides whether the session reads (inflow.InboundGate)."""

    def handled(self) -> None:
        """A message left the inbox."""


class Corked(Protocol):
    def uncork(self) -> None: ...


class _CorkedSteps(Coroutine[Any, Any, None]):
    """The inbox's consumer, its owner's output corked during each of its steps: what the
    handlers write between two suspensions (the acks of a turn's messages) leaves in one
    system call, before the task suspends. A coroutine object, not a generator, so that
    it is a task's coroutine on every supported Python."""

    __slots__ = ("_coro", "_owner")

    def __init__(self, coro: Coroutine[Any, Any, None], owner: Consumer):
        self._coro = coro
        self._owner = owner

    def send(self, value: Any) -> Any:
        corked = self._owner.cork()
        try:
            return self._coro.send(value)
        finally:
            if corked is not None:
                corked.uncork()

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        corked = self._owner.cork()
        try:
            if val is None and tb is None:
                return self._coro.throw(typ)
            return self._coro.throw(typ, val, tb)  # pragma: no cover - old signature
        finally:
            if corked is not None:
                corked.uncork()

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, None]:  # pragma: no cover - a task's only
        return self._coro.__await__()


# the session whose messages the current task is handling (each consumer is its own task):
# a protocol error found while handling one must reach its session even once it is closed
consuming: contextvars.ContextVar[Consumer | None] = contextvars.ContextVar(
    "consuming", default=None)


class _Closed(enum.Enum):
    """Inbox sentinel: the disconnect handler runs after the messages received before. A
    one-member enum, so that `item is _CLOSED` tells the type checker what item is."""

    CLOSED = enum.auto()


_CLOSED: Final = _Closed.CLOSED


class Inbox:
    __slots__ = ("_owner", "_items", "bytes", "consumer", "_on_handled", "_loop")

    def __init__(self, owner: Consumer, on_handled: Callable[[], None] | None = None):
        self._owner = owner
        # made on the first message: most sessions are idle, and an empty deque still
        # holds a block of 64 slots
        self._items: deque[str | bytes | _Closed] | None = None
        self.bytes = 0  # about how much the queued messages hold
        self.consumer: asyncio.Task[None] | None = None
        # after each message (the session may read again); None: the owner's gate's
        # `handled`, called without a bound method kept for every session
        self._on_handled = on_handled
        # the session's loop, from its first message on (asking for the running loop costs
        # a getpid() system call on Python 3.11: twice per message, with ensure_future)
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    def put(self, item: str | bytes) -> None:
        self.bytes += len(item)
        self._append(item)

    def put_closed(self) -> None:
        self._append(_CLOSED)

    def drop_pending(self) -> None:
        """Forget the messages not handled yet (the disconnect handler still runs)."""
        if self._items:
            self._items = deque(item for item in self._items if item is _CLOSED)
        self.bytes = 0

    def _append(self, item: str | bytes | _Closed) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        if self.consumer is None:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self.consumer = loop.create_task(_CorkedSteps(self._consume(loop), self._owner))

    async def _consume(self, loop: asyncio.AbstractEventLoop) -> None:
        owner = self._owner
        server, sid = owner.server, owner.sid
        on_message = server.message_handler
        on_handled = self._on_handled or owner.gate.handled
        consuming.set(owner)
        handled, turn_start = 0, loop.time()
        try:
            while self._items:
                item = self._items.popleft()
                if item is _CLOSED:
                    await server.fire_disconnect(sid, owner.close_reason or "")
                    return
                self.bytes -= len(item)
                server.counters.messages_in += 1
                try:
                    await on_message(sid, item)
                except asyncio.CancelledError:
                    raise
                except Exception:  # one bad message must not kill the session's reader
                    log.exception("session %s: message handler failed", owner.sid)
                on_handled()
                handled += 1
                if self._items and (handled >= TURN_MESSAGES
                                    or loop.time() - turn_start >= TURN_SECONDS):
                    # the rest waits one turn of the loop: other sessions' reads, timers
                    # and messages go first (with nothing left, the task ends instead)
                    await asyncio.sleep(0)
                    handled, turn_start = 0, loop.time()
        finally:
            self.consumer = None
            if not self._items:
                self._items = None
                self.bytes = 0
