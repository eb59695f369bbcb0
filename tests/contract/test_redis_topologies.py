"""Connection options, start-up failures and failure behaviour of the Redis backend on real
redis-server processes: URL (password, db), Sentinel (failover without losing acknowledged
updates), Cluster (every multi-key operation inside one slot), restarts, script caches."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from redis.cluster import key_slot

from rt.backends import User
from rt.backends.redis_conn import (
    KeySpace,
    RedisConfigError,
    RedisTarget,
    RedisUnavailable,
    connect,
)
from rt.backends.redis_presence import RedisPresence
from rt.backends.redis_store import DOC_BUCKETS, RedisStore
from rt.backends.redis_usage import RedisUsage
from rt.core.errors import StoreError
from tests.support.redis_servers import free_port, start_standalone

from .conftest import unique_prefix

pytestmark = pytest.mark.asyncio


def store_for(target: RedisTarget, **kw) -> RedisStore:
    return RedisStore(target.client(), target.keys(), where=target.describe(), **kw)


# settings ----------------------------------------------------------------------------------
async def test_target_from_settings() -> None:
    state = SimpleNamespace(
        redis_url="redis://user:p%40ss@mymaster/2", redis_cluster=False,
        sentinel_hosts=("s1", "s2:26380", "[::1]", "[::1]:26381"), sentinel_port=26379,
        key_prefix="open-webui", redis_timeout=2.5)
    t = RedisTarget.from_settings(state)
    assert t.command_timeout == 2.5
    assert t.sentinels() == [("s1", 26379), ("s2", 26380), ("::1", 26379), ("::1", 26381)]
    assert t.master_name() == "mymaster"
    assert "p@ss" not in t.describe() and "p%40ss" not in t.describe()
    assert t.describe().startswith("Redis master 'mymaster' via Sentinel s1:26379,")
    assert "(db 2)" in t.describe()
    assert RedisTarget(url="redis://:secret@h:1/0").describe() == "Redis at redis://:***@h:1/0"
    assert RedisTarget(url="redis://h:7000", cluster=True).describe().startswith("Redis Cluster")


@pytest.mark.parametrize("kw, match", [
    ({"url": "redis://h/3", "cluster": True}, "only db 0"),
    ({"url": "redis://h/0", "cluster": True, "sentinel_hosts": ("s",)}, "exclude"),
    ({"url": "unix:///tmp/r.sock", "cluster": True}, "unix"),
    ({"url": "http://h/0"}, "redis://"),
    ({"url": "redis://h/0", "sentinel_hosts": ("s:0",)}, "host:port"),
    ({"url": "redis://h/0", "key_prefix": "a{b}"}, "hash tags"),
])
async def test_bad_settings_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(RedisConfigError, match=match):
        RedisTarget(**kw).validate()


async def test_key_space() -> None:
    ks = KeySpace("open-webui")
    assert ks.key("dir", "user", "u1") == "open-webui:{dir}:user:u1"
    assert ks.channel("socketio") == "open-webui:socketio"
    assert KeySpace("").key("t", "x") == "{t}:x"


# start-up ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["url", "sentinel", "cluster"])
async def test_unreachable_redis_is_a_clear_start_error(kind: str) -> None:
    port = free_port()
    target = {
        "url": RedisTarget(url=f"redis://:hunter2@127.0.0.1:{port}/0"),
        "sentinel": RedisTarget(url="redis://:hunter2@mymaster/0",
                                sentinel_hosts=(f"127.0.0.1:{port}",)),
        "cluster": RedisTarget(url=f"redis://:hunter2@127.0.0.1:{port}/0", cluster=True),
    }[kind]
    target = dataclasses.replace(target, connect_timeout=1.0)
    started = time.monotonic()
    store = store_for(target)
    with pytest.raises(RedisUnavailable, match="unreachable") as info:
        await store.open()
    await store.close()
    assert time.monotonic() - started < 10
    assert "hunter2" not in str(info.value)
    assert str(port) in str(info.value)
    with pytest.raises(RedisUnavailable):
        await connect(target)
    assert isinstance(info.value, StoreError)  # the cli's "cannot start" path


async def test_url_with_password_and_db(tmp_path: Path) -> None:
    topo = start_standalone(tmp_path / "r", ["requirepass s3cret"])
    try:
        good = RedisTarget(url=f"redis://:s3cret@127.0.0.1:{topo.server.port}/3",
                           key_prefix="p")
        store = store_for(good)
        await store.open()
        await store.put_user(User("u1", "Ann"))
        await store.close()
        with topo.server.client(password="s3cret", db=3) as c:
            assert c.keys("*") == [b"p:{dir}:user:u1"]
        with topo.server.client(password="s3cret", db=0) as c:
            assert c.keys("*") == []

        bad = RedisTarget(url=f"redis://:wrong-pw@127.0.0.1:{topo.server.port}/3")
        store = store_for(bad)
        with pytest.raises(RedisUnavailable) as info:
            await store.open()
        await store.close()
        assert "wrong-pw" not in str(info.value)
    finally:
        topo.stop()


# running -----------------------------------------------------------------------------------
async def test_store_rides_out_a_redis_restart(tmp_path: Path) -> None:
    topo = start_standalone(tmp_path / "r")
    try:
        target = RedisTarget(url=topo.url, key_prefix=unique_prefix(), connect_timeout=1)
        store = store_for(target)
        await store.open()
        try:
            await store.put_user(User("u1", "Ann"))
            topo.server.kill()
            started = time.monotonic()
            with pytest.raises(StoreError):
                await store.get_user("u1")
            with pytest.raises(StoreError):
                await store.ping()  # readyz: 503
            assert time.monotonic() - started < 10
            topo.server.start()  # same port, nothing persisted
            await store.ping()  # no reopen needed
            assert await store.get_user("u1") is None
            assert await store.append_update("note:a", b"x") == 1  # scripts load again
        finally:
            await store.close()
    finally:
        topo.stop()


async def test_lost_script_cache_is_survived(redis_server) -> None:
    target = RedisTarget(url=redis_server.url, key_prefix=unique_prefix())
    store = store_for(target)
    await store.open()
    try:
        await store.append_update("note:a", b"1")
        await store.client.script_flush()
        assert await store.append_update("note:a", b"2") == 2
        assert (await store.load_document("note:a")).updates == [b"1", b"2"]
    finally:
        await store.close()


async def test_prefixes_keep_deployments_apart(redis_server) -> None:
    p1, p2 = unique_prefix(), unique_prefix()
    s1 = store_for(RedisTarget(url=redis_server.url, key_prefix=p1))
    s2 = store_for(RedisTarget(url=redis_server.url, key_prefix=p2))
    await s1.open()
    await s2.open()
    try:
        await s1.put_user(User("u1", "Ann"))
        await s1.put_channel("c1", ["u1"])
        await s1.append_update("note:a", b"x")
        await s1.set_chat_read("chat", "u1", 1.0)
        pres = RedisPresence(s1.client, s1.keys)
        await pres.add("sid", "u1")
        await RedisUsage(s1.client, s1.keys).touch("m", "sid", 1.0)
        assert await s2.get_user("u1") is None
        assert await s2.channels_of_user("u1") == []
        assert await s2.document_stats() == (0, 0)
        keys = [k.decode() async for k in s1.client.scan_iter(match=f"*{p1}*")]
        assert keys and all(k.startswith(f"{p1}:{{") for k in keys)
    finally:
        await s1.close()
        await s2.close()


# Sentinel ----------------------------------------------------------------------------------
async def test_sentinel_failover_keeps_acknowledged_updates(redis_sentinel) -> None:
    await asyncio.to_thread(redis_sentinel.wait_healthy)
    target = RedisTarget(url=redis_sentinel.url, sentinel_hosts=redis_sentinel.sentinel_hosts,
                         key_prefix=unique_prefix(), connect_timeout=1)
    store = store_for(target, wait_replicas=1, wait_timeout=2.0)
    await store.open()
    try:
        acked = await asyncio.gather(*(store.append_update("note:a", f"u{i}".encode())
                                       for i in range(50)))
        await store.client.script_flush()  # the pipelined WAIT path falls back to EVAL
        acked.append(await store.append_update("note:a", b"u50"))
        assert sorted(acked) == list(range(1, 52))
        new_master = await asyncio.to_thread(redis_sentinel.failover)

        # Every acknowledged update is on the new master...
        _, log_key, _, _ = store._doc("note:a")
        with new_master.client() as c:
            assert c.info("replication")["role"] == "master"
            assert sorted(c.lrange(log_key, 0, -1)) == sorted(
                f"u{i}".encode() for i in range(51))

        # ...and the store goes on, through Sentinel, on the new master. An append may
        # fail (the old master has no replica until Sentinel re-points it): then it was
        # not acknowledged. Whatever was acknowledged is there and in order.
        deadline = time.monotonic() + 30
        later = []
        while len(later) < 5 and time.monotonic() < deadline:
            try:
                later.append(await store.append_update("note:a", f"v{len(later)}".encode()))
            except StoreError:
                await asyncio.sleep(0.2)
        assert len(later) == 5 and later == sorted(later) and later[0] > 51
        doc = await store.load_document("note:a")
        assert [u for u in doc.updates if u.startswith(b"v")] == [
            f"v{i}".encode() for i in range(5)]
    finally:
        await store.close()


async def test_sentinel_wait_reports_missing_replicas(redis_sentinel) -> None:
    await asyncio.to_thread(redis_sentinel.wait_healthy)
    target = RedisTarget(url=redis_sentinel.url, sentinel_hosts=redis_sentinel.sentinel_hosts,
                         key_prefix=unique_prefix())
    store = store_for(target, wait_replicas=2, wait_timeout=0.2)  # there is only one
    await store.open()
    try:
        with pytest.raises(StoreError, match="reached 1 of 2 replicas"):
            await store.append_update("note:a", b"x")
    finally:
        await store.close()


# Cluster -----------------------------------------------------------------------------------
async def test_keys_of_one_operation_share_a_slot() -> None:
    class NoClient:
        pass

    store = RedisStore(NoClient(), KeySpace("open-webui"))  # key building only, no I/O
    for doc in ("note:1", "note:{x}", "a}b", "ü"):
        assert len({key_slot(k.encode()) for k in store._doc(doc)}) == 1
    dir_keys = [store._dir("user", "u"), store._dir("channels"), store._dir("members", "c}"),
                store._dir("user-channels", "{u")]
    assert len({key_slot(k.encode()) for k in dir_keys}) == 1
    ks = KeySpace("open-webui")
    presence = [ks.key("presence", "nodes"), ks.key("presence", "user", "{x}")]
    assert len({key_slot(k.encode()) for k in presence}) == 1
    # documents spread over the cluster, one slot per bucket
    slots = {key_slot(store._doc(f"note:{i}")[0].encode()) for i in range(2000)}
    assert len(slots) == DOC_BUCKETS


async def test_cluster_wait_goes_to_the_node_of_the_document(redis_cluster) -> None:
    target = RedisTarget(url=redis_cluster.url, cluster=True, key_prefix=unique_prefix())
    store = store_for(target)
    await store.open()
    try:
        for i in range(10):  # documents on every master
            meta, log, _, stats = store._doc(f"note:{i}")
            seq, acked = await store._run(
                lambda c: store._append_and_wait(c, [meta, log, stats], [b"x", "1.0"]))
            assert (seq, acked) == (1, 0)  # no replicas in this cluster
        assert await store.document_stats() == (10, 10)
    finally:
        await store.close()
