"""Background loops (rt/tasks.py) stop when cancelled, even when a library swallowed the
cancellation: Python 3.11's asyncio.wait_for, which redis-py wraps around every send,
drops a cancel that lands as its inner call finishes. A loop that ran on would hang the
appliance's stop (found with the Redis fault tests)."""
import asyncio

import pytest

from rt.core.tasks import TaskGroup, cancel_swallowed, every

pytestmark = pytest.mark.asyncio


async def test_a_loop_stops_even_when_its_step_swallowed_the_cancel():
    entered = asyncio.Event()

    async def swallowing_step() -> None:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # what the library does: the step ends normally

    group = TaskGroup()
    task = group.start("swallower", every("swallower", 0.001, swallowing_step))
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(group.stop(), 5)
    assert task.cancelled()


async def test_a_failing_step_is_retried_and_cancel_still_stops_the_loop():
    calls = 0

    async def failing_step() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("store unavailable")

    group = TaskGroup()
    group.start("failing", every("failing", 0.001, failing_step, max_backoff=0.002))
    for _ in range(500):
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    assert calls >= 3
    await asyncio.wait_for(group.stop(), 5)


async def test_a_store_outage_is_logged_in_one_line_and_a_bug_with_its_traceback(caplog):
    from rt.core.errors import StoreError
    failures = [StoreError("no answer within 3 s"), RuntimeError("a bug")]
    done = asyncio.Event()

    async def step() -> None:
        if failures:
            raise failures.pop(0)
        done.set()

    group = TaskGroup()
    with caplog.at_level("WARNING", logger="rt.app"):
        group.start("sweep", every("sweep", 0.001, step, max_backoff=0.002))
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.wait_for(group.stop(), 5)
    outage, bug = [r for r in caplog.records if r.name == "rt.app"][:2]
    assert "no answer within 3 s" in outage.getMessage() and outage.exc_info is None
    assert "sweep failed" in bug.getMessage() and bug.exc_info is not None


async def test_a_swallowed_cancel_is_seen_by_the_current_task_or_the_one_passed():
    swallowed = asyncio.Event()
    seen: list[tuple[bool, bool]] = []

    async def reader() -> None:
        me = asyncio.current_task()
        seen.append((cancel_swallowed(), cancel_swallowed(me)))  # not asked to stop yet
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # swallowed, as asyncio.wait_for may do under redis-py
        seen.append((cancel_swallowed(), cancel_swallowed(me)))
        swallowed.set()

    task = asyncio.get_running_loop().create_task(reader())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait_for(swallowed.wait(), 5)
    await asyncio.wait_for(task, 5)
    assert seen == [(False, False), (True, True)]
