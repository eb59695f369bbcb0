"""Readiness and the figures of /metrics and /admin read the state, they never write it: a
probe every few seconds must cost no fsync (SQLite) and no write (Redis). A store whose
write path fails still reports not ready, and ready again once writes work."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import redis

from rt.backends.sqlite_store import SqliteStore
from rt.core.errors import StoreError
from tests.support.appliance import running
from tests.support.redis_servers import start_standalone

pytestmark = pytest.mark.asyncio

PROBES = 30


def file_state(db: Path) -> list[tuple[int, int]]:
    """Size and modification time of the database and its write-ahead log."""
    wal = db.with_name(db.name + "-wal")
    return [(p.stat().st_size, p.stat().st_mtime_ns) for p in (db, wal) if p.exists()]


async def total_changes(store: SqliteStore) -> int:
    return await store._run(lambda db: db.total_changes)


async def test_sqlite_ping_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rt.sqlite3"
    store = SqliteStore(str(path))
    await store.open()
    try:
        await store.append_update("note:a", b"x")
        changes, files = await total_changes(store), file_state(path)
        for _ in range(PROBES):
            await store.ping()
            await store.document_stats()
        assert await total_changes(store) == changes
        assert file_state(path) == files
    finally:
        await store.close()


async def test_sqlite_failing_write_path_is_not_ready_until_a_write_works(
        tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "rt.sqlite3"))
    await store.open()
    try:
        await store.ping()
        # White-box: the connection refuses every write, as a file made read-only under
        # the open descriptor does (the file system itself still looks writable)
        await store._run(lambda db: db.execute("PRAGMA query_only = 1"))
        await store.ping()  # nothing has tried to write yet
        with pytest.raises(StoreError, match="readonly"):
            await store.append_update("note:a", b"x")
        for _ in range(3):  # every probe, not only the first
            with pytest.raises(StoreError, match="readonly"):
                await store.ping()
        await store._run(lambda db: db.execute("PRAGMA query_only = 0"))
        await store.ping()  # writes work again: ready without any other write
        assert await store.append_update("note:a", b"x") == 1
        await store.ping()
    finally:
        await store.close()


async def test_a_node_on_sqlite_answers_probes_without_writing(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        assert (await h.api("PUT", "/api/v1/users/a", {"name": "Ann"}))[0] == 200
        path = tmp_path / "data" / "rt-appliance.sqlite3"
        store = h.app.backend.store
        assert isinstance(store, SqliteStore)
        changes, files = await total_changes(store), file_state(path)
        for _ in range(PROBES):
            assert (await h.api("GET", "/readyz", key=None))[0] == 200
        for _ in range(3):
            assert (await h.http.fetch(h.url + "/metrics")).code == 200
            assert (await h.api("GET", "/admin/status.json"))[0] == 200
        assert await total_changes(store) == changes
        assert file_state(path) == files


def writes(server: redis.Redis) -> int:
    # every change of a key counts here (nothing is saved: the counter only grows)
    return int(server.info("persistence")["rdb_changes_since_last_save"])


async def test_a_node_on_redis_answers_probes_without_writing(tmp_path: Path) -> None:
    topo = start_standalone(tmp_path / "redis")
    try:
        env = {"WEBSOCKET_MANAGER": "redis", "WEBSOCKET_REDIS_URL": topo.server.url,
               "REDIS_KEY_PREFIX": f"rt-test-{uuid.uuid4().hex[:12]}"}
        # a lease long enough that no beat falls into the probes
        async with running(tmp_path / "node", "[state]\nnode_ttl = 600\n", env) as h:
            assert (await h.api("PUT", "/api/v1/users/a", {"name": "Ann"}))[0] == 200
            server = topo.server.client()
            before = writes(server)
            for _ in range(PROBES):
                assert (await h.api("GET", "/readyz", key=None))[0] == 200
            for _ in range(3):
                assert (await h.http.fetch(h.url + "/metrics")).code == 200
                assert (await h.api("GET", "/admin/status.json"))[0] == 200
            assert writes(server) == before
            # a Redis that is gone makes the node not ready (and back for the node's stop)
            topo.server.kill()
            status, body = await h.api("GET", "/readyz", key=None)
            assert status == 503, body
            topo.server.start()
    finally:
        topo.stop()


async def test_the_redis_probe_counter_sees_writes(tmp_path: Path) -> None:
    # the check above is only worth something if the counter moves on a write
    topo = start_standalone(tmp_path / "redis")
    try:
        server = topo.server.client()
        before = writes(server)
        server.set(f"k-{os.getpid()}", b"v")
        assert writes(server) == before + 1
    finally:
        topo.stop()
