"""The `store` fixture: every contract test runs once per Store implementation.

To hold another implementation to the contract, add a factory to STORE_FACTORIES. A
factory gets the pytest request (to pull in fixtures such as a Redis server with
`request.getfixturevalue`) and a private temporary directory, and returns an unopened
store; the fixture opens it before the test and closes it after.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from rt.backends import Store
from rt.backends.sqlite_store import SqliteStore

StoreFactory = Callable[[pytest.FixtureRequest, Path], Store]


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    # A directory that does not exist yet: open() must create it.
    return SqliteStore(str(tmp_path / "data" / "rt.sqlite3"))


STORE_FACTORIES: dict[str, StoreFactory] = {
    "sqlite": _sqlite,
}


@pytest_asyncio.fixture(params=list(STORE_FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = STORE_FACTORIES[request.param](request, tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
