"""Limits (issue 8): each refuses with a clear error, is counted, and spares the others."""
import asyncio
import math
import time
import uuid

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


# --- hostile clients: usage amplification and unbounded read markers (issue 8) -----------
async def barrier(h, *clients) -> None:
    """Everything sent to these clients before now has arrived (one connection keeps its
    order): an API emit to all, awaited at each."""
    marker = uuid.uuid4().hex
    assert (await h.api("POST", "/api/v1/emit", {"event": "barrier", "data": marker,
                                                  "to": {"all": True}}))[0] == 202
    for c in clients:
        await c.rec.wait_for("barrier", lambda d: d == marker)


async def test_usage_model_caps_refuse_and_broadcast_nothing(tmp_path):
    ini = "[limits]\nusage_models_per_connection = 2\nusage_models_max = 3\nusage_ttl = 30\n"
    async with running(tmp_path, ini) as h:
        tok = await h.user("a")
        a, other, observer = await h.connect(tok), await h.connect(tok), await h.connect(tok)
        assert await a.call("usage", {"model": "m1"}, timeout=5) is None
        assert await a.call("usage", {"model": "m2"}, timeout=5) is None
        ack = await a.call("usage", {"model": "m3"}, timeout=5)
        assert ack["error"] == "rate_limited" and "models" in ack["message"]
        assert await a.call("usage", {"model": "m1"}, timeout=5) is None  # a refresh is fine
        # the cap in all: a third model fits, a fourth does not (for anybody)
        assert await other.call("usage", {"model": "m4"}, timeout=5) is None
        ack = await other.call("usage", {"model": "m5"}, timeout=5)
        assert ack["error"] == "rate_limited" and "too many models" in ack["message"]
        # without an ack the refusal comes back as an `error` event
        await other.emit("usage", {"model": "m6"})
        err = await other.rec.wait_for("error")
        assert err["error"] == "rate_limited" and err["event"] == "usage"

        await observer.rec.wait_for("usage", lambda d: d["models"] == ["m1", "m2", "m4"])
        await barrier(h, observer)
        seen = {m for d in observer.rec.of("usage") for m in d["models"]}
        assert seen == {"m1", "m2", "m4"}  # the refused models reached nobody
        assert (await h.api("GET", "/api/v1/usage"))[1] == {"models": ["m1", "m2", "m4"]}
        assert h.app.limits.refused["usage_models_per_connection"] == 1
        assert h.app.limits.refused["usage_models"] == 2
        status, text = await h.api("GET", "/metrics")
        assert 'rt_limited_total{limit="usage_models"} 2.0' in text.decode()
        assert a.connected and other.connected


async def test_usage_storm_gives_bounded_broadcasts_ending_with_the_final_set(tmp_path):
    # usage_ttl long enough that nothing expires during the test
    async with running(tmp_path, "[limits]\nusage_ttl = 30\n") as h:
        tok = await h.user("a")
        observer = await h.connect(tok)
        senders = [await h.connect(tok) for _ in range(7)]
        models = [f"model-{i:02d}" for i in range(50)]  # 8 per sender at most (the default)
        started = time.monotonic()
        for i, m in enumerate(models):  # a storm spread over about half a second
            await senders[i % 7].emit("usage", {"model": m})
            await asyncio.sleep(0.01)
        await observer.rec.wait_for("usage", lambda d: len(d["models"]) == 50)
        # let a pending (trailing) broadcast go out, then make sure it has arrived
        await asyncio.wait_for(_idle(h.app.usage), 5)
        elapsed = time.monotonic() - started
        await barrier(h, observer)
        got = observer.rec.of("usage")
        interval = h.app.usage.interval
        assert 1 <= len(got) <= 2 + math.ceil(elapsed / interval) < 50, (len(got), elapsed)
        assert got[-1] == {"models": sorted(models)}
        assert (await h.api("GET", "/api/v1/usage"))[1] == {"models": sorted(models)}
        assert not any(s.rec.of("error") for s in senders)


async def _idle(usage) -> None:
    while usage._task is not None:
        await asyncio.sleep(0.02)


async def test_chat_read_markers_beyond_the_cap_evict_the_oldest(tmp_path):
    async with running(tmp_path, "[limits]\nchat_reads_per_user = 3\n") as h:
        a = await h.connect(await h.user("a"))
        b = await h.connect(await h.user("b"))

        async def read_at(chat: str, user: str):
            status, body = await h.api("GET", f"/api/v1/chats/{chat}/read/{user}")
            assert status == 200
            return body["last_read_at"]

        assert await b.call("events:chat", {"chat_id": "c0", "data": {"type": "last_read_at"}},
                            timeout=5) is None
        for i in range(6):
            assert await a.call("events:chat", {"chat_id": f"c{i}",
                                                "data": {"type": "last_read_at"}},
                                timeout=5) is None
        times = [await read_at(f"c{i}", "a") for i in range(6)]
        assert times[:3] == [None, None, None]  # the three oldest went
        assert all(isinstance(t, float) for t in times[3:]) and times[3:] == sorted(times[3:])
        # marking a chat again is not one more marker
        assert await a.call("events:chat", {"chat_id": "c3", "data": {"type": "last_read_at"}},
                            timeout=5) is None
        assert None not in [await read_at(f"c{i}", "a") for i in (3, 4, 5)]
        # another user's markers are their own
        assert await read_at("c0", "b") is not None
        assert (await h.api("GET", "/api/v1/users/a"))[0] == 200
