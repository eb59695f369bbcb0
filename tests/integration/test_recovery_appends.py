"""recovery/appends.py on the recovery state in process and on real Redis: open-webui's
emits are appended in the order they were queued, the ones queued together with one script
call; what cannot be kept (too large, the store unavailable) goes to its fallback in that
order and leaves a marker where it was; a caller that waits hears the outcome after what
was queued before it; a slow store makes the queue's producer wait."""
from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from types import SimpleNamespace

import pytest
import pytest_asyncio

from rt.backends.recovery_state import Bounds, MemoryRecoveryState, RedisRecoveryState
from rt.backends.redis_conn import RedisTarget
from rt.core.tasks import TaskGroup
from rt.recovery import appends as appends_module
from rt.recovery.appends import MAX_BATCH, ForeignAppends
from tests.support.redis_servers import free_port, redis_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio
WAIT = 10.0
SID = "sid-1"


def redis_state(url: str, **target) -> RedisRecoveryState:
    t = RedisTarget(url=url, key_prefix=f"rt-ap-{uuid.uuid4().hex[:8]}", **target)
    return RedisRecoveryState(t.client(), t.keys(), channel=t.keys().channel("x"),
                              sharded=False, host_id="rt-recovery",
                              bounds=Bounds(max_packet_bytes=200))


@pytest_asyncio.fixture(params=["memory", "redis"])
async def state(request):
    if request.param == "memory":
        yield MemoryRecoveryState(Bounds(max_packet_bytes=200))
        return
    made = redis_state(request.getfixturevalue("redis_server").url)
    yield made
    await made.client.aclose()


class Delivered:
    """The fallbacks called, in order."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def of(self, n: int):
        async def fallback() -> None:
            self.order.append(n)
        return fallback


def keeper(state) -> SimpleNamespace:
    return SimpleNamespace(state=state, unrecorded=Counter(), results=Counter(),
                           gap_pending=False)


async def appended(state, start: str) -> list[str]:
    """The prefixes of the log after `start` meant for SID, in order."""
    missed = await state.missed(start, [SID], SID)
    assert missed.reason == ""
    return [prefix for _, prefix, _ in missed.packets]


async def test_emits_queued_together_go_in_order_with_few_calls(state) -> None:
    kept, tasks, fell = keeper(state), TaskGroup(), Delivered()
    appends = ForeignAppends(kept, tasks)
    start = await state.head()
    for n in range(600):  # (put returns at once: all queued before the first append)
        await appends.put("tok", [n], [SID], fell.of(n))
    assert await appends.idle(WAIT)
    assert await appended(state, start) == [f'2["tok",{n}' for n in range(600)]
    assert fell.order == [] and kept.results["foreign_recorded"] == 600
    if isinstance(state, RedisRecoveryState):
        assert state.appended == 600
        assert state.append_calls == -(-600 // MAX_BATCH)  # 256 at a time: 3 calls
    # one at a time, each one call
    calls = getattr(state, "append_calls", 0)
    for n in range(3):
        await appends.put("one", [n], [SID], fell.of(n))
        assert await appends.idle(WAIT)
    if isinstance(state, RedisRecoveryState):
        assert state.append_calls == calls + 3
    await tasks.stop()


async def test_keep_hears_after_what_was_queued_before(state) -> None:
    kept, tasks, fell = keeper(state), TaskGroup(), Delivered()
    appends = ForeignAppends(kept, tasks)
    start = await state.head()
    for n in range(5):
        await appends.put("tok", [n], [SID], fell.of(n))
    assert await asyncio.wait_for(appends.keep("last", [], [SID]), WAIT) is True
    assert (await appended(state, start))[-1] == '2["last"'
    assert len(await appended(state, start)) == 6
    await tasks.stop()


async def test_a_too_large_emit_falls_back_and_leaves_a_marker_in_its_place(
        redis_server) -> None:
    state = redis_state(redis_server.url)
    kept, tasks, fell = keeper(state), TaskGroup(), Delivered()
    appends = ForeignAppends(kept, tasks)
    try:
        await appends.put("a", [1], [SID], fell.of(1))
        await appends.put("big", ["x" * 500], [SID], fell.of(2))
        await appends.put("b", [3], [SID], fell.of(3))
        assert await appends.idle(WAIT)
        assert fell.order == [2] and kept.unrecorded["too_large"] == 1
        log = await state.client.xrange(state.log_key)
        kinds = [fields.get(b"p", b"marker") for _, fields in log]
        assert kinds == [b'2["a",1', b"marker", b'2["b",3']
        # a recovery across the marker fails, one after it is complete
        a_offset, _, b_offset = (entry_id.decode() for entry_id, _ in log)
        assert (await state.missed(a_offset, [SID], SID)).reason == "unrecorded"
        assert (await state.missed(b_offset, [SID], SID)).reason == ""
    finally:
        await tasks.stop()
        await state.client.aclose()


async def test_an_unavailable_store_falls_back_in_order_and_marks_a_gap() -> None:
    state = redis_state(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2,
                        command_timeout=0.5)
    kept, tasks, fell = keeper(state), TaskGroup(), Delivered()
    appends = ForeignAppends(kept, tasks)
    try:
        for n in range(5):
            await appends.put("tok", [n], [SID], fell.of(n))
        assert await asyncio.wait_for(appends.keep("waited", [], [SID]), WAIT) is False
        assert await appends.idle(WAIT)
        assert fell.order == [0, 1, 2, 3, 4]
        assert kept.gap_pending is True and kept.unrecorded["unavailable"] == 6
        assert kept.results["foreign_recorded"] == 0
    finally:
        await tasks.stop()
        await state.client.aclose()


class SlowState(MemoryRecoveryState):
    """The in-process log, whose appends wait until `go` is set."""

    def __init__(self) -> None:
        super().__init__(Bounds())
        self.go = asyncio.Event()

    async def emit_many(self, entries):
        await self.go.wait()
        return await super().emit_many(entries)


async def test_a_slow_store_makes_put_wait(monkeypatch) -> None:
    monkeypatch.setattr(appends_module, "MAX_QUEUED", 10)
    state = SlowState()
    kept, tasks, fell = keeper(state), TaskGroup(), Delivered()
    appends = ForeignAppends(kept, tasks)
    start = await state.head()
    await appends.put("first", [], [SID], fell.of(0))
    await asyncio.sleep(0)  # the writer takes it and waits on the store
    for n in range(1, 10):
        await appends.put("tok", [n], [SID], fell.of(n))  # 9 queued: below the bound
    tenth = asyncio.ensure_future(appends.put("tok", [10], [SID], fell.of(10)))
    await asyncio.sleep(0.1)
    assert not tenth.done()  # 10 queued: the producer waits
    state.go.set()
    await asyncio.wait_for(tenth, WAIT)
    assert await appends.idle(WAIT)
    assert len(await appended(state, start)) == 11 and fell.order == []
    await tasks.stop()


class BrokenState(MemoryRecoveryState):
    """The in-process log with appends that fail unexpectedly (a bug, not an outage)."""

    async def emit_many(self, entries):
        raise RuntimeError("broken")


async def test_an_unexpected_failure_still_delivers_in_order(caplog) -> None:
    state = BrokenState(Bounds())
    kept, tasks, fell = keeper(state), TaskGroup(), Delivered()
    appends = ForeignAppends(kept, tasks)
    for n in range(3):
        await appends.put("tok", [n], [SID], fell.of(n))
    assert await asyncio.wait_for(appends.keep("waited", [], [SID]), WAIT) is False
    assert await appends.idle(WAIT)
    assert fell.order == [0, 1, 2] and kept.gap_pending is True
    assert "appending open-webui's emits to the recovery log failed" in caplog.text
    # the queue goes on: the next emit is tried again
    await appends.put("next", [], [SID], fell.of(9))
    assert await appends.idle(WAIT)
    assert fell.order == [0, 1, 2, 9]
    await tasks.stop()
