"""What `[state] manager` builds, and the one line the start-up message says about it:
the backend's name and where its state is, never a password."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from rt.backends.factory import Backend, build_backend
from tests.support.appliance import settings_for

pytestmark = pytest.mark.asyncio


def backend(tmp_path: Path, env: dict[str, str] | None = None) -> Backend:
    return build_backend(settings_for(tmp_path, env=env))


async def test_embedded_state_is_sqlite(tmp_path: Path) -> None:
    b = backend(tmp_path)
    assert b.name == "sqlite"
    path = os.path.join(str(tmp_path / "data"), "rt-appliance.sqlite3")
    assert b.description == f"sqlite: {path}"


@pytest.mark.parametrize(("env", "line"), [
    ({"WEBSOCKET_REDIS_URL": "redis://ann:s3cr%40t@cache.example:6380/2"},
     "redis: redis://ann:***@cache.example:6380/2"),
    ({"WEBSOCKET_REDIS_URL": "redis://:pw@mymaster/1",
      "WEBSOCKET_SENTINEL_HOSTS": "s1:26379,s2"},
     "redis: sentinel mymaster via s1:26379,s2:26379, db 1"),
    ({"WEBSOCKET_REDIS_URL": "redis://:pw@node1:7000/0", "WEBSOCKET_REDIS_CLUSTER": "true"},
     "redis: cluster redis://:***@node1:7000/0"),
])
async def test_redis_says_where_without_credentials(tmp_path: Path, env: dict[str, str],
                                                    line: str) -> None:
    b = backend(tmp_path, {"WEBSOCKET_MANAGER": "redis", **env})
    assert b.name == "redis"
    assert b.description == line
    assert "s3cr" not in b.description and "pw" not in b.description
