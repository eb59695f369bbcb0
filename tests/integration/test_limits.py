"""Limits (issue 8): each refuses with a clear error, is counted, and spares the others."""
import asyncio

import pytest

from tests.support.appliance import running

pytestmark = pytest.mark.asyncio


async def test_connect_rate_and_connections_per_ip(tmp_path):
    ini = ("[limits]\nconnects_per_second_per_ip = 0.5\nconnect_burst_per_ip = 4\n"
           "max_connections_per_ip = 2\n")
    async with running(tmp_path, ini) as h:
        tok = await h.user("a")
        c1 = await h.connect(tok)
        await h.connect(tok)
        assert await h.refused(tok) == "rate_limited"  # third live session from 127.0.0.1
        await c1.disconnect()
        await asyncio.sleep(0.1)
        await h.connect(tok)  # a slot is free again (the fourth token of the burst)
        assert await h.refused(tok) == "rate_limited"  # now the connect rate itself
        assert h.app.limits.refused["connections_per_ip"] == 1
        assert h.app.limits.refused["connect_rate"] >= 1


async def test_total_connections(tmp_path):
    async with running(tmp_path, "[limits]\nmax_connections = 2\n") as h:
        tok = await h.user("a")
        await h.connect(tok)
        await h.connect(tok)
        assert await h.refused(tok) == "rate_limited"
        assert h.app.limits.refused["connections"] == 1


async def test_events_per_connection(tmp_path):
    async with running(tmp_path, "[limits]\nevents_per_second = 0.5\nevents_burst = 5\n") as h:
        tok = await h.user("a")
        c = await h.connect(tok)
        other = await h.connect(tok)
        acks = [await c.call("heartbeat", {}, timeout=5) for _ in range(7)]
        assert acks[:5] == [None] * 5
        assert acks[5]["error"] == "rate_limited" and acks[6]["error"] == "rate_limited"
        # unknown events count too, and the other connection is unaffected
        assert (await c.call("nonsense", {}, timeout=5))["error"] == "rate_limited"
        assert await other.call("heartbeat", {}, timeout=5) is None
        assert c.connected


async def test_rooms_per_connection(tmp_path):
    async with running(tmp_path, "[limits]\nmax_rooms_per_connection = 4\n") as h:
        tok = await h.user("a")
        for i in range(5):
            await h.api("PUT", f"/api/v1/channels/ch{i}", {"members": ["a"]})
        c = await h.connect(tok)
        rooms_before = sorted(h.app.sio.rooms(c.get_sid()))
        ack = await c.call("user-join", {}, timeout=5)
        assert ack["error"] == "rate_limited" and "rooms" in ack["message"]
        assert sorted(h.app.sio.rooms(c.get_sid())) == rooms_before  # all or nothing
        # its own sid room and user:a count too: 2 channels fit in 4 rooms
        for i in (2, 3, 4):
            await h.api("DELETE", f"/api/v1/channels/ch{i}")
        assert (await c.call("user-join", {}, timeout=5))["id"] == "a"


async def test_api_body_size_and_rate(tmp_path):
    ini = "[limits]\napi_max_body_bytes = 2048\napi_requests_per_second = 1\napi_burst = 5\n"
    async with running(tmp_path, ini) as h:
        big = {"event": "x", "data": "y" * 4096, "to": {"all": True}}
        status, body = await h.api("POST", "/api/v1/emit", big)
        assert status == 413 and body["error"] == "too_large"
        codes = [(await h.api("GET", "/api/v1/usage"))[0] for _ in range(8)]
        assert codes[:4] == [200] * 4 and codes[-1] == 429
        status, body = await h.api("GET", "/api/v1/usage")
        assert status == 429 and body["error"] == "rate_limited"
        # health checks are not API calls: never limited
        assert (await h.api("GET", "/healthz", key=None))[0] == 200
        assert h.app.limits.refused["api_body"] == 1 and h.app.limits.refused["api_rate"] >= 1
