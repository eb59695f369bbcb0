"""UsageService: coalesced `usage` broadcasts and the clock that expires entries."""
from __future__ import annotations

import asyncio
import math
import time

import pytest

from rt.backends.memory import MemoryUsage
from rt.usage.service import BROADCAST_INTERVAL, UsageService

pytestmark = pytest.mark.asyncio

INTERVAL = 0.2  # short, so the tests wait little; bounds below are computed from it


class Emitter:
    """Records what would go to every client; `during` runs inside an emit (a slow publish)."""

    def __init__(self, sent: list | None = None) -> None:
        self.sent: list[list[str]] = [] if sent is None else sent
        self.during = None

    async def emit(self, event: str, data: dict, *, everyone: bool = False, **_) -> None:
        assert event == "usage" and everyone
        hook, self.during = self.during, None
        if hook is not None:
            await hook()
        self.sent.append(list(data["models"]))


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def settled(*services: UsageService, timeout: float = 5.0) -> None:
    """Until no broadcast is pending (bounded)."""
    async def idle() -> None:
        while any(s._task is not None for s in services):
            await asyncio.sleep(0.01)
    await asyncio.wait_for(idle(), timeout)


def service(registry=None, sent=None, broadcast=True, interval=INTERVAL) -> UsageService:
    return UsageService(registry or MemoryUsage(), Emitter(sent), ttl=3.0,
                        broadcast=broadcast, interval=interval)


async def test_the_interval_is_a_named_second() -> None:
    assert BROADCAST_INTERVAL == 1.0
    assert UsageService(MemoryUsage(), Emitter(), 3.0, True).interval == BROADCAST_INTERVAL


async def test_first_change_goes_out_at_once_and_unchanged_sets_never() -> None:
    s = service()
    await s.touch("m1", "s1")
    await settled(s)
    assert s.emitter.sent == [["m1"]]
    for _ in range(5):  # refreshes: the set did not change
        await s.touch("m1", "s1")
        await s.touch("m1", "s2")
    await s.sweep()
    await settled(s)
    assert s.emitter.sent == [["m1"]] and s.broadcasts == 1


async def test_a_storm_of_changes_gives_a_bounded_number_of_broadcasts_and_the_final_set() -> None:
    s = service()
    started = time.monotonic()
    for i in range(50):
        await s.touch(f"model-{i:02d}", f"sid-{i % 7}")
        await asyncio.sleep(0)  # let the broadcaster run between events, as a server would
    await settled(s)
    elapsed = time.monotonic() - started
    final = await s.models()
    assert len(final) == 50
    # at most one per interval (plus the leading one), instead of one per change
    assert 1 <= len(s.emitter.sent) <= 2 + math.ceil(elapsed / INTERVAL) < 50
    assert s.emitter.sent[-1] == final  # the trailing edge carries the final set


async def test_changes_that_cancel_out_within_an_interval_are_not_broadcast() -> None:
    s = service()
    await s.touch("m1", "s1")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert s.emitter.sent == [["m1"]]  # leading edge
    await s.touch("m2", "s2")  # within the interval: waits for its end...
    await s.drop("s2")  # ...and is undone before it
    await settled(s)
    assert s.emitter.sent == [["m1"]]


async def test_nothing_is_sent_when_broadcasting_is_off() -> None:
    s = service(broadcast=False)
    await s.touch("m1", "s1")
    await s.drop("s1")
    assert s._task is None and s.emitter.sent == []


async def test_close_cancels_a_pending_broadcast() -> None:
    s = service(interval=30.0)
    await s.touch("m1", "s1")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await s.touch("m2", "s1")  # pending for 30 s
    assert s._task is not None
    await asyncio.wait_for(s.close(), 5)
    assert s._task is None and s.emitter.sent == [["m1"]]


async def test_a_failed_read_is_retried_and_the_change_still_told() -> None:
    registry = MemoryUsage()
    s = service(registry)
    real = registry.snapshot
    failures = [1]

    async def flaky():
        if failures:
            failures.pop()
            raise RuntimeError("store down")
        return await real()

    registry.snapshot = flaky
    await s.touch("m1", "s1")
    await settled(s)
    assert s.emitter.sent == [["m1"]]


async def test_shared_set_the_last_message_carries_the_final_set() -> None:
    """Two nodes on one shared set (Redis mode). Node A reads the set, node B changes it
    and broadcasts while A's publish of the older set is still on its way, so A's stale
    message lands last; A sees the version moved and sends the newer set too."""
    registry = MemoryUsage()
    registry.shared = True  # as RedisUsage: other nodes change and broadcast the set
    sent: list[list[str]] = []  # what an observer receives, from either node
    a, b = service(registry, sent), service(registry, sent)

    async def b_changes_meanwhile() -> None:
        await b.touch("m-b", "sb")
        await settled(b)

    a.emitter.during = b_changes_meanwhile
    await a.touch("m-a", "sa")
    await settled(a, b)
    assert sent[0] == ["m-a", "m-b"] and sent[1] == ["m-a"]  # B's, then A's stale one
    assert sent[-1] == ["m-a", "m-b"] == await registry.models()
    assert len(sent) == 3


# --- the clock ----------------------------------------------------------------------------
async def test_wall_clock_jumps_do_not_move_single_node_expiry(monkeypatch) -> None:
    mono = Clock()
    s = UsageService(MemoryUsage(clock=mono), Emitter(), ttl=3.0, broadcast=False)
    wall = [time.time()]
    monkeypatch.setattr(time, "time", lambda: wall[0])
    await s.touch("m1", "s1")
    wall[0] += 3600  # forward: would expire everything at once on the wall clock
    await s.sweep()
    assert await s.models() == ["m1"]
    wall[0] -= 7200  # backward: would keep entries alive for an hour
    mono.t += 2.9
    await s.sweep()
    assert await s.models() == ["m1"]
    mono.t += 0.2  # 3.1 s after the touch on the clock that counts
    await s.sweep()
    assert await s.models() == []


async def test_default_single_node_registry_ignores_the_wall_clock(monkeypatch) -> None:
    s = UsageService(MemoryUsage(), Emitter(), ttl=0.05, broadcast=False)
    assert s.clock is time.monotonic
    wall = [time.time()]
    monkeypatch.setattr(time, "time", lambda: wall[0])
    await s.touch("m1", "s1")
    wall[0] += 3600
    await s.sweep()
    assert await s.models() == ["m1"]  # not expired by the jump
    wall[0] -= 7200

    async def expired() -> None:  # expires on real monotonic time despite the jump back
        while True:
            await s.sweep()
            if not await s.models():
                return
            await asyncio.sleep(0.02)
    await asyncio.wait_for(expired(), 2.0)
