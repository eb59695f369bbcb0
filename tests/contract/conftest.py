"""The `store` fixture: every contract test runs once per Store implementation.

To hold another implementation to the contract, add a factory to STORE_FACTORIES. A
factory gets the pytest request (to pull in fixtures such as a Redis server with
`request.getfixturevalue`) and a private temporary directory, and returns an unopened
store; the fixture opens it before the test and closes it after.
"""
from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from rt.backends import Store
from rt.backends.sqlite_store import SqliteStore
from tests.support.redis_servers import (  # noqa: F401 - fixtures for the redis tests
    redis_cluster,
    redis_sentinel,
    redis_server,
)

StoreFactory = Callable[[pytest.FixtureRequest, Path], Store]


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    # A directory that does not exist yet: open() must create it.
    return SqliteStore(str(tmp_path / "data" / "rt.sqlite3"))


def require_fakeredis_lua() -> None:
    """fakeredis runs Lua scripts only with `lupa` (fakeredis[lua]); skip locally, fail
    under CI=true, where the test dependencies must be complete."""
    if importlib.util.find_spec("lupa") is not None:
        return
    hint = "fakeredis needs lupa for Lua scripts: pip install 'fakeredis[lua]'"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {hint}", pytrace=False)
    pytest.skip(hint)


def unique_prefix() -> str:
    """A key prefix of its own per test, so tests sharing one Redis never see each
    other's keys (and the prefix isolation is exercised all along)."""
    return f"rt-test-{uuid.uuid4().hex[:12]}"


def _fakeredis(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    import fakeredis

    from rt.backends.redis_conn import KeySpace
    from rt.backends.redis_store import RedisStore

    require_fakeredis_lua()
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    return RedisStore(client, KeySpace(unique_prefix()), where="fakeredis")


def _redis(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    from rt.backends.redis_conn import RedisTarget
    from rt.backends.redis_store import RedisStore

    server = request.getfixturevalue("redis_server")
    target = RedisTarget(url=server.url, key_prefix=unique_prefix())
    return RedisStore(target.client(), target.keys(), where=target.describe())


def _redis_sentinel(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    from rt.backends.redis_conn import RedisTarget
    from rt.backends.redis_store import RedisStore

    topo = request.getfixturevalue("redis_sentinel")
    topo.wait_healthy()  # a failover test may have just swapped the roles
    target = RedisTarget(url=topo.url, sentinel_hosts=topo.sentinel_hosts,
                         key_prefix=unique_prefix())
    # Sentinel sets have a replica: every append also waits until it has the update.
    return RedisStore(target.client(), target.keys(), where=target.describe(), wait_replicas=1)


def _redis_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    from rt.backends.redis_conn import RedisTarget
    from rt.backends.redis_store import RedisStore

    topo = request.getfixturevalue("redis_cluster")
    target = RedisTarget(url=topo.url, cluster=True, key_prefix=unique_prefix())
    return RedisStore(target.client(), target.keys(), where=target.describe())


STORE_FACTORIES: dict[str, StoreFactory] = {
    "sqlite": _sqlite,
    "fakeredis": _fakeredis,
    "redis": _redis,
    "redis-sentinel": _redis_sentinel,
    "redis-cluster": _redis_cluster,
}


@pytest_asyncio.fixture(params=list(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = STORE_FACTORIES[request.param](request, tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
