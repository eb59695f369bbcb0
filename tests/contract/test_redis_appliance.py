"""Two in-process appliances sharing one real Redis through the Redis backend, wired the way
`factory.build_backend` is meant to wire it (see `redis_backend` below): a browser on node
A, the backend API on node B, and the contract still holds (presence, emit, call,
membership, disconnect), including a node that dies without a word."""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from rt.app import Appliance
from rt.backends.factory import build_redis_backend
from rt.backends.redis_conn import RedisTarget
from tests.support.appliance import Harness, settings_for

from .conftest import unique_prefix

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def node(tmp_path: Path, target: RedisTarget, ini: str = ""):
    settings = settings_for(tmp_path, ini)
    app = Appliance(settings, backend=build_redis_backend(settings, target))
    await app.start()
    h = Harness(app)
    try:
        yield h
    finally:
        await h.close()
        await app.stop()


async def test_browser_on_one_node_backend_api_on_another(tmp_path: Path, redis_server) -> None:
    target = RedisTarget(url=redis_server.url, key_prefix=unique_prefix())
    async with node(tmp_path / "a", target) as a, node(tmp_path / "b", target) as b:
        token = await a.user("ann")
        client = await a.connect(token)
        sid = client.get_sid()
        client.on("ask", lambda data: {"answer": data["q"] * 2})

        status, body = await b.api("GET", "/api/v1/users/ann/presence")
        assert status == 200 and body["sessions"] == 1 and body["online"] is True

        status, _ = await b.api("POST", "/api/v1/emit",
                                {"event": "hello", "data": {"n": 1}, "to": {"users": ["ann"]}})
        assert status in (200, 202, 204)
        assert await client.rec.wait_for("hello") == {"n": 1}

        status, body = await b.api("POST", "/api/v1/call", {
            "sid": sid, "event": "ask", "data": {"q": 21}, "timeout_s": 5})
        assert (status, body) == (200, {"ack": {"answer": 42}})

        status, _ = await b.api("POST", "/api/v1/rooms/team/members", {"users": ["ann"]})
        assert status in (200, 204)
        await asyncio.sleep(0.2)  # the room change travels to node A
        await b.api("POST", "/api/v1/emit",
                    {"event": "in-room", "data": 1, "to": {"rooms": ["team"]}})
        assert await client.rec.wait_for("in-room") == 1

        status, _ = await b.api("POST", "/api/v1/users/ann/disconnect")
        assert status in (200, 204)

        async def gone() -> None:
            while True:
                status, body = await b.api("GET", "/api/v1/users/ann/presence")
                if body["sessions"] == 0:
                    return
                await asyncio.sleep(0.05)
        await asyncio.wait_for(gone(), 10)


async def test_sessions_of_a_dead_node_vanish(tmp_path: Path, redis_server) -> None:
    target = RedisTarget(url=redis_server.url, key_prefix=unique_prefix())
    async with node(tmp_path / "a", target) as a:
        dying = node(tmp_path / "b", target, "[state]\nnode_ttl = 0.5\n")
        b = await dying.__aenter__()
        try:
            token = await b.user("bob")
            await b.connect(token)
            await b.app.backend.presence.heartbeat()
            status, body = await a.api("GET", "/api/v1/presence")
            assert [u["id"] for u in body["users"]] == ["bob"]
            # node B "dies": no more heartbeats, no goodbye; its sessions stay in Redis
            await b.app.tasks.stop()

            async def vanished() -> None:
                while True:
                    status, body = await a.api("GET", "/api/v1/presence")
                    if body["users"] == []:
                        return
                    await asyncio.sleep(0.1)
            await asyncio.wait_for(vanished(), 5)
            # the survivor reaps them once, to tell the clients like a normal leave (its
            # next beat sees the lease passed: B joined after A's last one)
            await a.app.backend.presence.heartbeat()
            reaped = await a.app.backend.presence.dead_sessions()
            assert [user for _, user in reaped] == ["bob"]
            assert await a.app.backend.presence.dead_sessions() == []
        finally:
            await dying.__aexit__(None, None, None)
