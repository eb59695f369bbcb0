"""The contract of the presence and usage registries, against memory and Redis (fakeredis
and a real redis-server), then what only the cluster-wide Redis registries promise: several
nodes see one state, and the sessions of a node that stops heartbeating vanish."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from rt.backends import PresenceRegistry, UsageRegistry
from rt.backends.memory import MemoryPresence, MemoryUsage
from rt.backends.redis_conn import AnyRedis, KeySpace, RedisTarget
from rt.backends.redis_presence import RedisPresence
from rt.backends.redis_usage import RedisUsage
from rt.core.errors import StoreError, UsageFull

from .conftest import require_fakeredis_lua, unique_prefix

pytestmark = pytest.mark.asyncio


@dataclass
class RedisEnv:
    """Clients on one Redis, as several nodes would have; closed at teardown."""

    make: Callable[[], AnyRedis]
    keys: KeySpace
    clients: list[AnyRedis] = field(default_factory=list)
    flush: Callable[[], object] | None = None

    def client(self) -> AnyRedis:
        c = self.make()
        self.clients.append(c)
        return c

    def presence(self, **kw) -> RedisPresence:
        return RedisPresence(self.client(), self.keys, **kw)

    def usage(self) -> RedisUsage:
        return RedisUsage(self.client(), self.keys)

    async def close(self) -> None:
        for c in self.clients:
            await c.aclose()


def _env(kind: str, request: pytest.FixtureRequest) -> RedisEnv:
    if kind == "fakeredis":
        require_fakeredis_lua()
        import fakeredis

        server = fakeredis.FakeServer()
        return RedisEnv(lambda: fakeredis.FakeAsyncRedis(server=server),
                        KeySpace(unique_prefix()))
    if kind == "cluster":
        topo = request.getfixturevalue("redis_cluster")
        target = RedisTarget(url=topo.url, cluster=True, key_prefix=unique_prefix())
    else:
        topo = request.getfixturevalue("redis_server")
        target = RedisTarget(url=topo.url, key_prefix=unique_prefix())
    return RedisEnv(target.client, target.keys())


@pytest_asyncio.fixture(params=["fakeredis", "redis", "cluster"])
async def redis_env(request: pytest.FixtureRequest) -> AsyncIterator[RedisEnv]:
    env = _env(request.param, request)
    try:
        yield env
    finally:
        await env.close()


@pytest_asyncio.fixture(params=["memory", "fakeredis", "redis"])
async def presence(request: pytest.FixtureRequest) -> AsyncIterator[PresenceRegistry]:
    if request.param == "memory":
        yield MemoryPresence()
        return
    env = _env(request.param, request)
    try:
        yield env.presence()
    finally:
        await env.close()


@pytest_asyncio.fixture(params=["memory", "fakeredis", "redis"])
async def usage(request: pytest.FixtureRequest) -> AsyncIterator[UsageRegistry]:
    if request.param == "memory":
        yield MemoryUsage()
        return
    env = _env(request.param, request)
    try:
        yield env.usage()
    finally:
        await env.close()


async def wait_for(check, timeout: float = 5.0, interval: float = 0.05) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


# presence contract -------------------------------------------------------------------------
async def test_presence_add_remove(presence: PresenceRegistry) -> None:
    assert await presence.users() == {}
    assert await presence.sessions_of("u1") == []
    assert await presence.user_of("s1") is None
    assert await presence.remove("s1") is None

    await presence.add("s1", "u1")
    await presence.add("s2", "u1")
    await presence.add("s3", "u2")
    assert sorted(await presence.sessions_of("u1")) == ["s1", "s2"]
    assert await presence.user_of("s3") == "u2"
    assert await presence.users() == {"u1": 2, "u2": 1}

    assert await presence.remove("s1") == "u1"
    assert await presence.remove("s1") is None
    assert await presence.sessions_of("u1") == ["s2"]
    assert await presence.users() == {"u1": 1, "u2": 1}
    assert await presence.remove("s2") == "u1"
    assert await presence.users() == {"u2": 1}
    assert await presence.sessions_of("u1") == []
    assert await presence.user_of("s2") is None


async def test_presence_ids_with_separators(presence: PresenceRegistry) -> None:
    # ids are opaque: colons, braces, newlines or spaces must not break anything
    odd = ["a:b", "{x}", "line\nbreak", "sp ace", "ü"]
    for i, uid in enumerate(odd):
        await presence.add(f"sid-{i}", uid)
    assert await presence.users() == {u: 1 for u in odd}
    for i, uid in enumerate(odd):
        assert await presence.sessions_of(uid) == [f"sid-{i}"]
        assert await presence.user_of(f"sid-{i}") == uid


async def test_presence_re_add_moves_a_session(presence: PresenceRegistry) -> None:
    await presence.add("s1", "u1")
    await presence.add("s1", "u1")  # idempotent
    assert await presence.users() == {"u1": 1}


# usage contract ----------------------------------------------------------------------------
async def test_usage_touch_drop_expire(usage: UsageRegistry) -> None:
    assert await usage.models() == []
    assert await usage.touch("m1", "s1", 100.0) is True
    assert await usage.touch("m1", "s2", 101.0) is False  # the set did not change
    assert await usage.touch("m1", "s1", 102.0) is False
    assert await usage.touch("m2", "s1", 103.0) is True
    assert await usage.models() == ["m1", "m2"]

    assert await usage.drop_sid("s1") is True  # m2 is gone, m1 stays for s2
    assert await usage.models() == ["m1"]
    assert await usage.drop_sid("s1") is False
    assert await usage.drop_sid("nobody") is False

    assert await usage.expire(101.0) is False  # s2's entry is at 101.0: not older
    assert await usage.expire(101.5) is True
    assert await usage.models() == []
    assert await usage.expire(1e12) is False


async def test_usage_expire_keeps_fresh_entries(usage: UsageRegistry) -> None:
    await usage.touch("m1", "s1", 10.0)
    await usage.touch("m1", "s2", 20.0)
    await usage.touch("m:2", "s1", 10.0)
    assert await usage.expire(15.0) is True  # m:2 went, m1 stays (s2)
    assert await usage.models() == ["m1"]
    await usage.touch("m1", "s1", 30.0)
    assert await usage.expire(25.0) is False  # s2's entry went, s1 keeps m1
    assert await usage.models() == ["m1"]
    assert await usage.drop_sid("s2") is False
    assert await usage.expire(31.0) is True


async def test_usage_sids_that_prefix_each_other(usage: UsageRegistry) -> None:
    await usage.touch("m1", "s1", 1.0)
    await usage.touch("m2", "s10", 1.0)
    assert await usage.drop_sid("s1") is True
    assert await usage.models() == ["m2"]


async def test_usage_models_per_session_cap(usage: UsageRegistry) -> None:
    assert await usage.touch("m1", "s1", 1.0, max_per_sid=2) is True
    assert await usage.touch("m2", "s1", 1.0, max_per_sid=2) is True
    with pytest.raises(UsageFull) as refused:
        await usage.touch("m3", "s1", 2.0, max_per_sid=2)
    assert refused.value.scope == "connection"
    assert await usage.models() == ["m1", "m2"]  # nothing changed
    # refreshing what it holds is always fine; so is a model another session joins
    assert await usage.touch("m2", "s1", 3.0, max_per_sid=2) is False
    assert await usage.touch("m3", "s10", 3.0, max_per_sid=2) is True
    # once one of its entries went, the session may take another model
    assert await usage.expire(2.5) is True  # s1's m1 (at 1.0) expired
    assert await usage.touch("m4", "s1", 4.0, max_per_sid=2) is True
    assert await usage.models() == ["m2", "m3", "m4"]


async def test_usage_distinct_models_cap(usage: UsageRegistry) -> None:
    for i in range(3):
        assert await usage.touch(f"m{i}", f"s{i}", 1.0, max_models=3) is True
    with pytest.raises(UsageFull) as refused:
        await usage.touch("m-new", "s9", 1.0, max_models=3)
    assert refused.value.scope == "total"
    # a model already in the set does not grow it: another session may use it
    assert await usage.touch("m0", "s9", 1.0, max_models=3) is False
    assert await usage.models() == ["m0", "m1", "m2"]
    await usage.drop_sid("s1")
    assert await usage.touch("m-new", "s9", 1.0, max_models=3) is True


async def test_usage_version_grows_with_every_change_only(usage: UsageRegistry) -> None:
    v0, models = await usage.snapshot()
    assert models == [] and await usage.version() == v0
    await usage.touch("m1", "s1", 1.0)
    v1, models = await usage.snapshot()
    assert v1 > v0 and models == ["m1"]
    await usage.touch("m1", "s2", 1.0)  # same set
    await usage.touch("m1", "s1", 2.0)
    with pytest.raises(UsageFull):
        await usage.touch("m2", "s1", 2.0, max_per_sid=1)
    assert await usage.version() == v1
    await usage.drop_sid("s2")  # m1 stays for s1
    assert await usage.version() == v1
    await usage.drop_sid("s1")
    v2 = await usage.version()
    assert v2 > v1 and await usage.snapshot() == (v2, [])
    await usage.touch("m1", "s1", 1.0)
    await usage.expire(5.0)
    assert await usage.version() > v2 + 1


async def test_usage_clocks_are_decided_by_the_registry() -> None:
    # one node: monotonic (wall-clock steps change nothing); shared: the common wall clock
    assert MemoryUsage().clock is time.monotonic and MemoryUsage.shared is False
    assert RedisUsage.clock is time.time and RedisUsage.shared is True


# Redis only: one state for several nodes ---------------------------------------------------
async def test_nodes_share_presence(redis_env: RedisEnv) -> None:
    a, b = redis_env.presence(), redis_env.presence()
    await a.add("sa", "u1")
    await b.add("sb", "u1")
    await b.add("sc", "u2")
    for node in (a, b):
        assert sorted(await node.sessions_of("u1")) == ["sa", "sb"]
        assert await node.users() == {"u1": 2, "u2": 1}
        assert await node.user_of("sc") == "u2"
    # a node removes a session of another node (e.g. a disconnect routed elsewhere)
    assert await a.remove("sc") == "u2"
    assert await b.users() == {"u1": 2}


async def test_node_death_sessions_vanish_and_are_reaped_once(redis_env: RedisEnv) -> None:
    a = redis_env.presence(node_ttl=30)
    c = redis_env.presence(node_ttl=30)
    dying = redis_env.presence(node_ttl=0.4)
    await a.add("sa", "u1")
    for i in range(5):
        await dying.add(f"d{i}", "u1" if i < 3 else "u2")
    assert await a.users() == {"u1": 4, "u2": 2}
    assert await a.dead_sessions() == []

    # `dying` stops heartbeating: within its ttl its sessions stop counting everywhere,
    # before anyone cleaned up.
    async def gone() -> bool:
        return await a.users() == {"u1": 1}
    await wait_for(gone, timeout=3)
    assert await a.sessions_of("u1") == ["sa"]
    assert await c.sessions_of("u2") == []
    assert await a.user_of("d0") is None

    # Two survivors reap concurrently: each dead session is announced exactly once.
    got_a, got_c = await asyncio.gather(a.dead_sessions(), c.dead_sessions())
    assert sorted(got_a + got_c) == sorted(
        [(f"d{i}", "u1" if i < 3 else "u2") for i in range(5)])
    assert await a.dead_sessions() == [] and await c.dead_sessions() == []
    assert await a.users() == {"u1": 1}


async def test_heartbeat_keeps_a_node_alive(redis_env: RedisEnv) -> None:
    a = redis_env.presence()
    b = redis_env.presence(node_ttl=0.5)
    await b.add("sb", "u1")
    for _ in range(8):
        await asyncio.sleep(0.15)
        await b.heartbeat()
        assert await a.sessions_of("u1") == ["sb"]
    assert await a.dead_sessions() == []


async def test_a_node_taken_for_dead_comes_back(redis_env: RedisEnv) -> None:
    a = redis_env.presence()
    b = redis_env.presence(node_ttl=0.3)
    await b.add("sb", "u1")
    await asyncio.sleep(0.5)
    assert await a.dead_sessions() == [("sb", "u1")]
    # b was only slow: its next heartbeat registers its live sessions again
    await b.heartbeat()
    assert await a.sessions_of("u1") == ["sb"]
    assert await a.users() == {"u1": 1}


async def test_a_node_back_from_an_outage_gives_the_others_one_beat(
        redis_env: RedisEnv) -> None:
    a = redis_env.presence(node_ttl=0.9)
    b = redis_env.presence(node_ttl=0.6)
    await b.add("sb", "u1")
    await a.heartbeat()
    real = a._run

    async def broken(op):
        raise StoreError("Redis down")

    a._run = broken
    with pytest.raises(StoreError):
        await a.heartbeat()
    a._run = real
    await asyncio.sleep(0.7)  # b's lease passed while Redis was away (for b too)
    assert await a.dead_sessions() == []  # not judged at a's first beat back
    await b.heartbeat()  # b's beat comes within a's: alive
    await asyncio.sleep(a.heartbeat_interval + 0.05)
    assert await a.dead_sessions() == []
    assert await a.sessions_of("u1") == ["sb"]
    await asyncio.sleep(0.7)  # b stops for good: judged as usual
    assert await a.dead_sessions() == [("sb", "u1")]


async def test_dead_sessions_asks_redis_only_when_a_lease_may_have_passed(
        redis_env: RedisEnv) -> None:
    a = redis_env.presence(node_ttl=30)
    b = redis_env.presence(node_ttl=30)
    await b.add("sb", "u1")
    assert await a.dead_sessions() == []  # its first look: b's lease ends in 30 s
    calls: list[object] = []
    real = a._run

    async def counting(op):
        calls.append(op)
        return await real(op)

    a._run = counting
    for _ in range(5):
        assert await a.dead_sessions() == []
    assert calls == []


async def test_heartbeat_re_registers_after_redis_lost_everything(redis_env: RedisEnv) -> None:
    a = redis_env.presence()
    await a.add("s1", "u1")
    await a.add("s2", "u2")
    await a.remove("s2")
    # what a restart without persistence (or a failover losing writes) leaves
    c = redis_env.client()
    if hasattr(c, "get_nodes"):  # Cluster: every primary
        await c.flushall(target_nodes=c.PRIMARIES)
    else:
        await c.flushall()
    assert await a.users() == {}
    await a.heartbeat()
    assert await a.users() == {"u1": 1}
    assert await a.sessions_of("u1") == ["s1"]
    assert await a.user_of("s1") == "u1"
    await a.heartbeat()  # steady state: nothing to do
    assert await a.users() == {"u1": 1}


async def test_remove_while_redis_is_down_is_finished_by_heartbeat(redis_env: RedisEnv) -> None:
    a = redis_env.presence()
    await a.add("s1", "u1")
    real = a._run

    async def broken(op):
        raise StoreError("Redis down")

    a._run = broken
    assert await a.remove("s1") == "u1"  # a disconnect goes through while Redis is down
    with pytest.raises(StoreError):
        await a.add("s2", "u2")  # a connect does not
    with pytest.raises(StoreError):
        await a.remove("not-ours")
    a._run = real
    assert await a.users() == {"u1": 1}  # still there...
    await a.heartbeat()
    assert await a.users() == {}  # ...until the next beat (and s2 never was)
    assert await a.sessions_of("u2") == []


async def test_retire_forgets_the_node(redis_env: RedisEnv) -> None:
    a, b = redis_env.presence(), redis_env.presence()
    await a.add("s1", "u1")
    await b.add("s2", "u1")
    assert await a.retire() == [("s1", "u1")]
    assert await b.users() == {"u1": 1}
    assert await b.dead_sessions() == []


async def test_many_sessions_of_a_dead_node(redis_env: RedisEnv) -> None:
    a = redis_env.presence()
    dying = redis_env.presence(node_ttl=1.0)
    n = 1200  # more than one reaping batch
    await asyncio.gather(*(dying.add(f"s{i}", f"u{i % 50}") for i in range(n)))
    await dying.heartbeat()  # its lease renewed now: adding may have taken longer than it
    assert sum((await a.users()).values()) == n
    await asyncio.sleep(1.1)
    reaped = await a.dead_sessions()
    assert len(reaped) == n and len(set(reaped)) == n
    assert await a.users() == {}


async def test_nodes_share_usage(redis_env: RedisEnv) -> None:
    a, b = redis_env.usage(), redis_env.usage()
    assert await a.touch("m1", "sa", 10.0) is True
    assert await b.touch("m1", "sb", 11.0) is False
    assert await b.models() == ["m1"]
    # both sweep; only one of them sees the change (and broadcasts)
    results = await asyncio.gather(a.expire(20.0), b.expire(20.0))
    assert sorted(results) == [False, True]
    assert await a.models() == []


async def test_sweeps_that_cannot_find_anything_ask_redis_nothing(redis_env: RedisEnv) -> None:
    a, b = redis_env.usage(), redis_env.usage()
    now = time.time()
    await b.touch("m1", "sb", now)  # another node's entry
    assert await a.expire(now - 10) is False  # asks, and learns the oldest entry's time
    calls: list[object] = []
    real = a._lua

    async def counting(*args):
        calls.append(args)
        return await real(*args)

    a._lua = counting
    for older_than in (now - 5, now - 1, now):
        assert await a.expire(older_than) is False
    assert calls == []  # nothing can be that old: every node sweeps every second for free
    assert await a.expire(now + 0.5) is True  # the entry's time passed: asked, and gone
    assert len(calls) == 1 and await b.models() == []
    # this node's own touch, however old its time, is swept when due
    await a.touch("m2", "sa", now - 100)
    assert await a.expire(now - 50) is True


async def test_nodes_share_the_usage_caps(redis_env: RedisEnv) -> None:
    a, b = redis_env.usage(), redis_env.usage()
    # several nodes touching at once never pass the cap together (checked in one script)
    got = await asyncio.gather(*(node.touch(f"m{i}", f"s{i}", 1.0, max_models=5)
                                 for i, node in enumerate([a, b] * 10)),
                               return_exceptions=True)
    assert sum(r is True for r in got) == 5
    assert all(isinstance(r, UsageFull) for r in got if r is not True)
    assert len(await b.models()) == 5
    # a change on one node is seen in the version every node reads
    v = await a.version()
    winner = next(i for i, r in enumerate(got) if r is True)  # any of them may have won
    assert await b.drop_sid(f"s{winner}") is True
    assert await a.version() > v


async def test_prefixes_isolate_deployments(redis_env: RedisEnv) -> None:
    other = RedisEnv(redis_env.make, KeySpace(unique_prefix()))
    try:
        a, b = redis_env.presence(), other.presence()
        await a.add("s1", "u1")
        assert await b.users() == {}
        assert await b.user_of("s1") is None
        ua, ub = redis_env.usage(), other.usage()
        await ua.touch("m", "s1", 1.0)
        assert await ub.models() == []
    finally:
        await other.close()
