"""The encrypted-channel relay's state, held to one contract on the embedded state and on
real Redis (standalone and Cluster): transactions serialize per channel, saves need the
lease, the buckets are counted where open-webui counts them."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from rt.backends.encryption_state import (
    MAX_PACKET,
    TTL,
    LeaseLost,
    MemoryRelayState,
    RedisRelayState,
    state_key,
)
from rt.backends.redis_conn import RedisTarget, close_quietly
from rt.core.errors import StoreError

from .conftest import unique_prefix

pytestmark = pytest.mark.asyncio

STATE = {"channel": "c1", "session": "s1", "host": "p1", "members": {
    "p1": {"sid": "sid1", "user": "ann", "name": "Ann", "key": None, "seen": 1.0, "out": 0,
           "admitted": True}}}


@pytest_asyncio.fixture(params=["memory", "redis", "redis-cluster"])
async def relay_state(request) -> AsyncIterator[MemoryRelayState | RedisRelayState]:
    if request.param == "memory":
        yield MemoryRelayState()
        return
    topology = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster")
    target = RedisTarget(url=topology.url, cluster=request.param == "redis-cluster",
                         key_prefix=unique_prefix())
    client = target.client()
    try:
        # the production wait and more: four transactions queue for one lock, and on a
        # loaded machine a cluster's round trips stretch (a wait of 0.5 s timed out)
        yield RedisRelayState(client, target.key_prefix, lock_wait=5.0)
    finally:
        await close_quietly(client)


async def test_a_saved_state_is_read_back_with_its_expiry(relay_state) -> None:
    async with relay_state.transaction("c1") as lease:
        assert lease.state is None
        await lease.save(json.loads(json.dumps(STATE)))
    async with relay_state.transaction("c1") as lease:
        assert {k: v for k, v in lease.state.items() if k != "expires"} == STATE
        assert lease.state["expires"] > 0
        await lease.save(None)
    async with relay_state.transaction("c1") as lease:
        assert lease.state is None


async def test_transactions_of_one_channel_run_one_at_a_time(relay_state) -> None:
    async def increment() -> None:
        async with relay_state.transaction("c1") as lease:
            state = lease.state or json.loads(json.dumps(STATE))
            count = state["members"]["p1"]["out"]
            await asyncio.sleep(0.01)  # a read-modify-write that others would interleave
            state["members"]["p1"]["out"] = count + 1
            await lease.save(state)

    for _ in range(3):  # the lock wait is bounded: a few at a time, several rounds
        await asyncio.gather(*(increment() for _ in range(4)))
    async with relay_state.transaction("c1") as lease:
        assert lease.state["members"]["p1"]["out"] == 12


async def test_admission_bucket_counts_ten_per_account(relay_state) -> None:
    assert all([await relay_state.admit("ann", "join", 100) for _ in range(10)])
    assert await relay_state.admit("ann", "start", 100) is False
    assert await relay_state.admit("bob", "start", 100) is True
    assert await relay_state.admit("ann", "packet", 4 * MAX_PACKET) is True
    assert await relay_state.admit("ann", "packet", 1) is False


@pytest_asyncio.fixture(params=["redis", "redis-cluster"])
async def redis_state(request) -> AsyncIterator[RedisRelayState]:
    topology = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster")
    target = RedisTarget(url=topology.url, cluster=request.param == "redis-cluster",
                         key_prefix=unique_prefix())
    client = target.client()
    try:
        yield RedisRelayState(client, target.key_prefix, lock_wait=0.3)
    finally:
        await close_quietly(client)


async def test_redis_layout_is_open_webuis(redis_state) -> None:
    c = redis_state.client
    async with redis_state.transaction("c1") as lease:
        lock = await c.get(state_key(redis_state.prefix, "c1") + ":lock")
        assert lock is not None and len(lock) == 32  # a redis-py Lock token (uuid1 hex)
        await lease.save(json.loads(json.dumps(STATE)))
    assert await c.get(state_key(redis_state.prefix, "c1") + ":lock") is None  # released
    raw = await c.get(state_key(redis_state.prefix, "c1"))
    assert b", " not in raw and b": " not in raw  # compact JSON, as open-webui writes it
    assert set(json.loads(raw)) == {"channel", "session", "host", "members", "expires"}
    assert 0 < await c.ttl(state_key(redis_state.prefix, "c1")) <= TTL
    await redis_state.admit("ann", "packet", 7)
    bucket = await c.hgetall(state_key(redis_state.prefix, "rate:ann:traffic"))
    assert bucket == {b"count": b"1", b"bytes": b"7"}


async def test_a_lease_taken_over_cannot_save(redis_state) -> None:
    c = redis_state.client
    key = state_key(redis_state.prefix, "c1")
    with pytest.raises(LeaseLost):
        async with redis_state.transaction("c1") as lease:
            # our lease ran out and another worker took the lock and saved its state
            await c.set(key + ":lock", b"another-worker", px=10000)
            await c.set(key, b'{"theirs":1}', ex=TTL)
            await lease.save(json.loads(json.dumps(STATE)))
    assert await c.get(key) == b'{"theirs":1}'
    assert await c.get(key + ":lock") == b"another-worker"  # not released by us


async def test_a_busy_lock_is_a_store_error(redis_state) -> None:
    c = redis_state.client
    await c.set(state_key(redis_state.prefix, "c1") + ":lock", b"stalled", px=10000)
    with pytest.raises(StoreError):
        async with redis_state.transaction("c1"):
            pytest.fail("entered a transaction whose lock is held")
