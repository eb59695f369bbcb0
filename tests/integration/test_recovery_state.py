"""The recovery state's contract, in process and on real Redis: the log's order and
offsets, what a session was meant to get, per-session bounds, the total bound and age
(a recovery across dropped entries fails), markers of emits too large to keep, and the
record's take (secret compared, once) and claims (compare-and-delete by node)."""
import asyncio
import uuid

import orjson
import pytest
import pytest_asyncio

from rt.backends.recovery_state import (
    Bounds,
    MemoryRecoveryState,
    RedisRecoveryState,
    SessionRecord,
    parse_offset,
)
from rt.backends.redis_conn import RedisTarget
from tests.support.redis_servers import redis_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(params=["memory", "redis"])
async def make_state(request):
    clients = []

    def make(**bounds):
        b = Bounds(**bounds)
        if request.param == "memory":
            return MemoryRecoveryState(b)
        server = request.getfixturevalue("redis_server")
        target = RedisTarget(url=server.url, key_prefix=f"rt-rs-{uuid.uuid4().hex[:8]}")
        client = target.client()
        clients.append(client)
        return RedisRecoveryState(client, target.keys(), channel=target.keys().channel("x"),
                                  sharded=False, host_id="rt-recovery", bounds=b)
    yield make
    for client in clients:
        await client.aclose()


def record(sid="s1", node="n1", secret="h"):
    return SessionRecord(sid=sid, secret=secret, user="u", name="U", role="user",
                         rooms=["user:u", sid], since="0-0", node=node)


async def test_a_record_reads_back_as_written():
    written = record(secret="s" * 64)
    written.until, written.live, written.ip = 12.5, False, "203.0.113.9"
    assert SessionRecord.loads(written.dumps()) == written
    assert orjson.loads(written.dumps())["rooms"] == ["user:u", "s1"]

async def test_offsets_increase_and_replay_is_what_was_meant(make_state):
    state = make_state()
    start = await state.head()
    offsets = [await state.emit(["user:u"], [], '2["e",0'),
               await state.emit(["other"], [], '2["x"'),
               await state.emit(None, [], '2["all"'),
               await state.emit(["user:u"], ["s1"], '2["skipped"'),
               await state.emit(["s1"], [], '2["mine"', (b"\x01",))]
    assert [parse_offset(o) for o in offsets] == sorted(parse_offset(o) for o in offsets)
    missed = await state.missed(start, ["user:u"], "s1")
    assert missed.reason == ""
    assert [p for _, p, _ in missed.packets] == ['2["e",0', '2["all"', '2["mine"']
    assert missed.packets[-1][2] == (b"\x01",)
    after_first = await state.missed(offsets[0], ["user:u"], "s1")
    assert [o for o, _, _ in after_first.packets] == [offsets[2], offsets[4]]
    assert (await state.missed("garbage", ["user:u"], "s1")).reason == "bad_offset"


async def test_per_session_bounds(make_state):
    state = make_state(max_packets=2, max_bytes=100)
    start = await state.head()
    for n in range(3):
        await state.emit(["user:u"], [], f'2["e",{n}')
    assert (await state.missed(start, ["user:u"], "s1")).reason == "bounds"
    assert (await state.missed(start, ["other"], "s2")).reason == ""
    state = make_state(max_bytes=100)
    start = await state.head()
    await state.emit(["user:u"], [], '2["e","' + "x" * 200)
    assert (await state.missed(start, ["user:u"], "s1")).reason == "bounds"


async def test_dropped_entries_fail_the_recovery(make_state):
    state = make_state(log_entries=100)
    start = await state.head()
    first = await state.emit(["user:u"], [], '2["e",0')
    for n in range(1, 400):
        await state.emit(["noise"], [], f'2["n",{n}')
    if isinstance(state, RedisRecoveryState):  # approximate trimming: make it happen
        await state.client.xtrim(state.log_key, maxlen=100, approximate=False)
    assert (await state.missed(start, ["user:u"], "s1")).reason == "expired"
    assert (await state.missed(first, ["user:u"], "s1")).reason == "expired"
    # a session whose start is after the dropped entries is unaffected
    last = await state.head()
    await state.emit(["user:u"], [], '2["e",1')
    assert len((await state.missed(last, ["user:u"], "s1")).packets) == 1


async def test_memory_log_bound_in_bytes_and_age():
    now = [0.0]
    state = MemoryRecoveryState(Bounds(log_bytes=65536, window=10), clock=lambda: now[0])
    start = await state.head()
    for n in range(100):
        await state.emit(["r"], [], f'2["e","{n:01000d}"')
    assert state.figures_data()["bytes"] <= 65536
    assert (await state.missed(start, ["r"], "s")).reason == "expired"
    mid = await state.head()
    await state.emit(["r"], [], '2["late"')
    now[0] = 11.0
    await state.emit(["other"], [], '2["later"')
    assert (await state.missed(mid, ["r"], "s")).reason == "expired"


async def test_marker_of_an_emit_too_large_to_keep(make_state):
    state = make_state()
    start = await state.head()
    await state.mark_gap(["user:u"], [])
    assert (await state.missed(start, ["user:u"], "s1")).reason == "unrecorded"
    assert (await state.missed(start, ["other"], "s2")).reason == ""


async def test_records_take_once_with_the_secret_and_claims_by_node(make_state):
    state = make_state()
    await state.save(record(), 5)
    assert await state.take("s1", "wrong") is None
    got = await state.take("s1", "h")
    assert got is not None and got.rooms == ["user:u", "s1"]
    assert await state.take("s1", "h") is None  # once
    await state.save(record(node="n2"), 5)
    assert not await state.disconnected(record(node="n1"), 5)  # n2's now
    assert not await state.drop("s1", "n1")
    assert await state.drop("s1", "n2")
    await state.save(record(), 0.2)
    await asyncio.sleep(0.4)
    assert await state.get("s1") is None  # its window passed


async def test_refresh_leaves_a_record_another_node_took(make_state):
    state = make_state()
    await state.save(record(node="n2"), 5)  # recovered on n2
    assert await state.save_many([record(node="n1"), record(sid="s2", node="n1")], 5) == ["s1"]
    assert (await state.get("s1")).node == "n2"
    assert (await state.get("s2")).node == "n1"


async def test_memory_state_survives_a_restart_of_its_node():
    state = MemoryRecoveryState(Bounds(window=60))
    start = await state.head()
    first = await state.emit(["user:u"], [], '2["e",0', (b"\x01",))
    rec = record()
    rec.until = 1e12
    await state.disconnected(rec, 60)
    again = MemoryRecoveryState(Bounds(window=60))
    assert again.load(state.dump()) == 1
    assert (await again.get("s1")).rooms == ["user:u", "s1"]
    missed = await again.missed(start, ["user:u"], "s1")
    assert missed.packets == [(first, '2["e",0', (b"\x01",))]
    later = await again.emit(["user:u"], [], '2["e",1')
    assert parse_offset(later) > parse_offset(first)  # offsets go on


async def test_kept_calls_are_added_once_dropped_and_read_per_session(make_state):
    """The calls kept for a session (rt/recovery/calls.py): a sent call overwrites what was
    kept under its key (its ack id now known), an unsent one is kept only when the key is
    new; each session has its own; dropping one or all of them."""
    state = make_state()
    await state.add_call("s1", "rt:h:1", b'{"w":null}', 60)
    await state.add_call("s1", "rt:h:1", b'{"w":7}', 60)
    await state.add_call("s1", "rt:h:1", b'{"w":null,"again":1}', 60, only_new=True)
    await state.add_call("s1", "ow:h:2", b'{"w":8}', 60)
    await state.add_call("s2", "ow:h:3", b'{"w":9}', 60)
    assert sorted(await state.calls("s1")) == [b'{"w":7}', b'{"w":8}']
    await state.drop_call("s1", "rt:h:1")
    assert await state.calls("s1") == [b'{"w":8}']
    await state.drop_calls("s1")
    assert await state.calls("s1") == []
    assert await state.calls("s2") == [b'{"w":9}']


async def test_kept_calls_survive_a_restart_of_the_one_node():
    state = MemoryRecoveryState(Bounds())
    await state.save(record("s1"), 60)
    await state.add_call("s1", "n:x:s1:1:a", b'{"w":1}', 60)
    await state.add_call("gone", "n:x:gone:1:a", b'{"w":1}', 60)  # no record: not kept
    again = MemoryRecoveryState(Bounds())
    assert again.load(state.dump()) == 1
    assert await again.calls("s1") == [b'{"w":1}']
    assert await again.calls("gone") == []
