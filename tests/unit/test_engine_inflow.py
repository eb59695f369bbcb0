"""The inbound budget (rt.engine.inflow) and the fair hand-over of messages (rt.engine.inbox):
the buckets' arithmetic on a given clock, and two sessions' backlogs worked off in turns on
a real EngineServer (sessions opened as the HTTP handler opens them, no sockets)."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from rt.engine.inflow import INBOX_MESSAGES, NEW_SESSION_PACKETS, TURN_MESSAGES, InboundBudget
from rt.engine.server import EngineOptions, EngineServer

OPTS = EngineOptions(inbound_rate=10.0, inbound_burst=5, inbound_bytes_rate=1000.0,
                     inbound_bytes_burst=2000, max_payload=1500, flood_close_after=3.0)


def test_budget_allows_the_burst_then_asks_for_the_refill_time():
    budget = InboundBudget(OPTS, now=0.0)
    assert [budget.charge(OPTS, 10, 0.0) for _ in range(5)] == [0.0] * 5
    assert budget.charge(OPTS, 10, 0.0) == pytest.approx(0.1)  # one packet at 10/s
    assert budget.charge(OPTS, 10, 0.0) == pytest.approx(0.2)
    assert budget.held_since == 0.0
    # after the refill time the budget is back at zero: one more is fine
    assert budget.charge(OPTS, 10, 0.3) == 0.0


def test_a_new_session_starts_with_part_of_its_burst():
    opts = dataclasses.replace(OPTS, inbound_burst=10 * NEW_SESSION_PACKETS)
    budget = InboundBudget(opts, now=0.0)
    assert all(budget.charge(opts, 1, 0.0) == 0.0 for _ in range(NEW_SESSION_PACKETS))
    assert budget.charge(opts, 1, 0.0) > 0.0  # a reconnect does not buy a whole burst
    budget = InboundBudget(opts, now=0.0)
    later = 10 * NEW_SESSION_PACKETS / opts.inbound_rate  # the rest comes back at the rate
    assert all(budget.charge(opts, 1, later) == 0.0 for _ in range(10 * NEW_SESSION_PACKETS))


def test_budget_counts_bytes_and_one_largest_message_always_fits():
    opts = dataclasses.replace(OPTS, inbound_bytes_burst=100)  # below max_payload
    budget = InboundBudget(opts, now=0.0)
    assert budget.charge(opts, 1500, 0.0) == 0.0  # the capacity is max_payload
    assert budget.charge(opts, 500, 0.0) == pytest.approx(0.5)  # 500 bytes at 1000 B/s


def test_held_at_the_budget_long_enough_is_a_flood():
    budget = InboundBudget(OPTS, now=0.0)
    now = 0.0
    while budget.charge(OPTS, 1, now) == 0.0:
        pass
    assert not budget.flooding(OPTS, now)
    for _ in range(40):  # at exactly the budget rate: never quiet, never full again
        now += 0.1
        budget.charge(OPTS, 1, now)
    assert budget.flooding(OPTS, now)
    assert not budget.flooding(dataclasses.replace(OPTS, flood_close_after=0), now)


def test_a_client_that_waits_for_its_answers_is_slowed_never_cut():
    """`more=False`: nothing else had arrived from the client (request, answer, request):
    such a client is held at the budget, but its run at it never becomes a flood."""
    budget = InboundBudget(OPTS, now=0.0)
    now = 0.0
    for _ in range(100):
        now += 0.05  # twice the budget's rate, one request at a time
        budget.charge(OPTS, 1, now, more=False)
    assert budget.charge(OPTS, 1, now, more=False) > 0.0  # slowed
    assert not budget.flooding(OPTS, now)


def test_a_pipelining_client_is_a_flood_across_read_boundaries():
    """Now and then the last packet of a read has nothing behind it yet; most have."""
    budget = InboundBudget(OPTS, now=0.0)
    now = 0.0
    for i in range(100):
        now += 0.05
        budget.charge(OPTS, 1, now, more=i % 10 != 9)
    assert budget.flooding(OPTS, now)


def test_a_quiet_pause_ends_the_run_at_the_budget():
    budget = InboundBudget(OPTS, now=0.0)
    for _ in range(7):
        budget.charge(OPTS, 1, 0.0)
    assert budget.held_since == 0.0
    budget.charge(OPTS, 1, 2.9)  # quiet long enough to have the whole burst back
    assert budget.held_since is None
    for _ in range(6):
        budget.charge(OPTS, 1, 3.5)
    assert budget.held_since == 3.5 and not budget.flooding(OPTS, 4.0)


@pytest.mark.asyncio
async def test_backlogs_of_two_sessions_are_worked_off_in_turns():
    engine = EngineServer(EngineOptions())
    handled: list[tuple[str, int]] = []

    async def connect(sid, environ):
        return True

    async def message(sid, data):
        handled.append((sid, int(data)))

    async def disconnect(sid, reason):
        pass

    engine.on("connect", connect)
    engine.on("message", message)
    engine.on("disconnect", disconnect)
    count = 5 * INBOX_MESSAGES
    a = await engine.create_session({}, "polling")
    b = await engine.create_session({}, "polling")
    body = "\x1e".join(f"4{i}" for i in range(count)).encode()
    a.handle_post(body)
    b.handle_post(body)
    # the inbox stops reading at its bound: the rest of each POST waits
    assert len(a.inbox) == len(b.inbox) == INBOX_MESSAGES and a.held and b.held
    await asyncio.wait_for(asyncio.gather(a.post_finished(), b.post_finished()), 5)
    while a._consumer is not None or b._consumer is not None:
        await asyncio.wait_for(asyncio.sleep(0.01), 1)
    assert [i for sid, i in handled if sid == a.sid] == list(range(count))
    assert [i for sid, i in handled if sid == b.sid] == list(range(count))
    runs, longest, previous = 0, 0, None
    for sid, _ in handled:
        runs = runs + 1 if sid == previous else 1
        longest, previous = max(longest, runs), sid
    assert longest <= TURN_MESSAGES  # neither session held the loop for its whole backlog
    assert engine.stats()["inbound_backlogged"] >= 2
    assert engine.stats()["messages_in"] == 2 * count
    for session in (a, b):
        session.close(notify_client=False)
    await asyncio.sleep(0)
