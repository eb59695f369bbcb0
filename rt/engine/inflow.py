"""How much one session may send: the inbound budget behind read backpressure.

Reading a client is cheap; handling what it sent is not (Socket.IO decoding, the gateway, a
refusal and its answer). So the engine decides before that work: every inbound packet is
counted against two token buckets (packets and bytes); when one runs dry the session stops
reading its socket until the bucket has refilled, and the kernel's buffers, then TCP, slow
the client down. Nothing is refused and nothing piles up in memory. A session that stays at
its budget (never quiet long enough for its burst allowance to come back) for
`flood_close_after` seconds is flooding and is closed.
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from .contracts import SessionHost
from .options import EngineOptions

# A session's consumer hands at most this many messages, or this much time, to the
# handlers in one turn of the event loop, then lets the other sessions' work in.
TURN_MESSAGES = 8
TURN_SECONDS = 0.001

# A new session starts with this much of its packet burst (the rest comes back at the
# budget's rate): a browser opening the app sends a handful of packets, while a client that
# reconnects to flood would otherwise get a whole fresh burst with every connection.
NEW_SESSION_PACKETS = 50

# Messages received but not handled yet: at this many (or options.inbox_bytes) the session
# stops reading; it reads again once the handlers have worked the backlog down to half.
INBOX_MESSAGES = 32


class Reader(Protocol):
    """The session a gate decides for."""

    def hold_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def flooded(self) -> None: ...


class Backlog(Protocol):
    """A session's inbox as the gate sees it (inbox.Inbox)."""

    bytes: int

    def __len__(self) -> int: ...


class InboundBudget:
    """Token buckets (packets, bytes) of one session, and since when it has been held at
    them. Times come from the caller (the loop's monotonic clock)."""

    __slots__ = ("_packets", "_bytes", "_stamp", "held_since", "_over", "_over_with_more")

    def __init__(self, options: EngineOptions, now: float):
        self._packets = float(min(options.inbound_burst, NEW_SESSION_PACKETS))
        self._bytes = float(_byte_capacity(options))
        self._stamp = now
        self.held_since: float | None = None  # start of the current run at the budget
        # packets over the budget in that run, and how many of them had more behind them
        self._over = self._over_with_more = 0

    def charge(self, options: EngineOptions, size: int, now: float, more: bool = True
               ) -> float:
        """Count one inbound packet of `size` bytes. 0.0 while within the budget, otherwise
        how long reading must stop for the buckets to be back at zero. `more`: the client
        had sent more already, it does not wait for answers; a run at the budget is a flood
        only when that is so for most packets over it. A client that asks and waits for each
        answer is slowed, never cut."""
        # (once per inbound packet: written out rather than with min/max and helpers)
        packet_cap = float(options.inbound_burst)
        byte_cap = float(options.inbound_bytes_capacity)
        elapsed = now - self._stamp
        if elapsed < 0.0:
            elapsed = 0.0
        self._stamp = now
        packet_rate, byte_rate = options.inbound_rate, options.inbound_bytes_rate
        packets = self._packets + elapsed * packet_rate
        if packets > packet_cap:
            packets = packet_cap
        size_left = self._bytes + elapsed * byte_rate
        if size_left > byte_cap:
            size_left = byte_cap
        if packets >= packet_cap and size_left >= byte_cap:
            self.held_since = None  # quiet long enough to have its whole allowance back
        packets -= 1.0
        size_left -= size
        self._packets, self._bytes = packets, size_left
        if packets >= 0.0 and size_left >= 0.0:
            return 0.0
        wait = max(0.0, -packets / packet_rate, -size_left / byte_rate)
        if wait > 0.0:
            if self.held_since is None:
                self.held_since, self._over, self._over_with_more = now, 0, 0
            self._over += 1
            self._over_with_more += more
        return wait

    def flooding(self, options: EngineOptions, now: float) -> bool:
        """Held at the budget for longer than the options allow."""
        limit = options.flood_close_after
        return (limit > 0 and self.held_since is not None and now - self.held_since >= limit
                and 2 * self._over_with_more > self._over)


def _byte_capacity(options: EngineOptions) -> int:
    # one largest message always fits, however the burst is configured
    return options.inbound_bytes_capacity


class InboundGate:
    """Whether one session reads now. `account` after every packet read: over the budget,
    reading stops for as long as the buckets need to refill (hold_reading, then
    resume_reading from a timer); with the inbox at its bound, until the handlers have
    worked it down to half (`handled`, after every message); held at the budget too long,
    flooded. The session (`reader`) does the stopping and resuming; this decides."""

    __slots__ = ("_host", "_inbox", "_budget", "held", "_timer", "_reader", "_loop")

    def __init__(self, host: SessionHost, inbox: Backlog, reader: Reader):
        self._host = host
        self._inbox = inbox
        self._budget: InboundBudget | None = None  # made on the first packet: most are idle
        self.held = False
        # until the budget has refilled: a task, not a timer, so that whoever waits for a
        # session's work to settle (a test harness) sees that more is coming
        self._timer: asyncio.Task[None] | None = None
        # the session itself, not three bound methods kept for every session
        self._reader = reader
        # the session's loop, from its first packet on (asking for the running loop costs
        # a getpid() system call on Python 3.11, and this runs for every packet)
        self._loop: asyncio.AbstractEventLoop | None = None

    def account(self, size: int, more: bool = True) -> None:
        opts = self._host.options
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        if self._budget is None:
            self._budget = InboundBudget(opts, now)
        wait = self._budget.charge(opts, size, now, more)
        if wait > 0.0:
            if self._budget.flooding(opts, now):
                self.cancel()
                self._reader.flooded()
                return
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.ensure_future(self._refill(wait))
            if not self.held:
                self._host.counters.inbound_throttled += 1
                self._hold()
        elif not self.held and self._backlogged(full=True):
            self._host.counters.inbound_backlogged += 1
            self._hold()

    def handled(self) -> None:
        """A message left the inbox."""
        if self.held and self._timer is None and not self._backlogged(full=False):
            self._resume()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _backlogged(self, full: bool) -> bool:
        """The inbox at its bound (full) or still above half of it."""
        count, size = INBOX_MESSAGES, self._host.options.inbox_bytes
        if not full:
            count, size = count // 2, size // 2
        return len(self._inbox) >= count or self._inbox.bytes >= size

    def _hold(self) -> None:
        self.held = True
        self._reader.hold_reading()

    async def _refill(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._timer = None
        if self.held and not self._backlogged(full=False):
            self._resume()

    def _resume(self) -> None:
        self.held = False
        self._reader.resume_reading()
