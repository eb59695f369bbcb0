"""Client → server events (protocol §3) and their error boundary."""
import asyncio

import pytest

from tests.support.appliance import running

pytestmark = pytest.mark.asyncio


async def setup_channel(h):
    tok_a = await h.user("a", "Ann")
    tok_b = await h.user("b", "Bob")
    tok_c = await h.user("c", "Cat")
    assert (await h.api("PUT", "/api/v1/channels/ch1", {"members": ["a", "b"]}))[0] == 200
    a, b, c = [await h.connect(t) for t in (tok_a, tok_b, tok_c)]
    for client, tok in ((a, tok_a), (b, tok_b), (c, tok_c)):
        await client.call("user-join", {"auth": {"token": tok}}, timeout=5)
    return a, b, c


async def test_typing_reaches_members_with_identity_name(tmp_path):
    async with running(tmp_path) as h:
        a, b, c = await setup_channel(h)
        await a.emit("events:channel", {
            "channel_id": "ch1", "message_id": None,
            "data": {"type": "typing", "data": {"typing": True}},
            "user": {"id": "b", "name": "Forged"}})
        for client in (a, b):  # sender included
            got = await client.rec.wait_for("events:channel")
            assert got == {"channel_id": "ch1", "message_id": None,
                           "data": {"type": "typing", "data": {"typing": True}},
                           "user": {"id": "a", "name": "Ann", "role": "user"}}
        await asyncio.sleep(0.2)
        assert c.rec.of("events:channel") == []


async def test_typing_needs_membership_and_is_coalesced_above_the_rate(tmp_path):
    async with running(tmp_path, "[limits]\ntyping_per_second = 2\ntyping_burst = 3\n") as h:
        a, b, c = await setup_channel(h)
        ack = await c.call("events:channel", {"channel_id": "ch1", "data": {"type": "typing"}},
                           timeout=5)
        assert ack["error"] == "forbidden"
        # one event per keystroke, as open-webui's editor sends them: never an error,
        # the burst goes out, the rest is folded into the newest state
        acks = [await a.call("events:channel", {"channel_id": "ch1", "data": {
            "type": "typing", "data": {"typing": i < 9}}}, timeout=5) for i in range(10)]
        assert acks == [None] * 10
        # b sees the three of the burst, then the last state (typing stopped) once the
        # bucket allows it, and nothing in between
        seen = await b.rec.wait_for("events:channel", lambda e: e["data"]["data"] == {
            "typing": False})
        assert seen["user"]["id"] == "a"
        states = [e["data"]["data"]["typing"] for e in b.rec.of("events:channel")]
        assert states == [True, True, True, False]
        assert h.app.limits.refused["typing"] == 7


async def test_read_markers(tmp_path):
    async with running(tmp_path) as h:
        a, b, c = await setup_channel(h)
        assert await a.call("events:channel", {"channel_id": "ch1",
                                               "data": {"type": "last_read_at"}}, timeout=5) is None
        status, body = await h.api("GET", "/api/v1/channels/ch1/members/a")
        assert status == 200 and body["last_read_at"] > 0
        status, body = await h.api("GET", "/api/v1/channels/ch1/members/b")
        assert body["last_read_at"] is None
        assert await a.call("events:chat", {"chat_id": "chat9", "data": {"type": "last_read_at"}},
                            timeout=5) is None
        status, body = await h.api("GET", "/api/v1/chats/chat9/read/a")
        assert status == 200 and body["last_read_at"] > 0


async def test_join_channels_follows_membership(tmp_path):
    async with running(tmp_path) as h:
        a, b, c = await setup_channel(h)
        await h.app.backend.store.put_channel("ch2", ["c"])  # behind the appliance's back
        assert await c.call("join-channels", {}, timeout=5) == {"channels": ["ch2"]}
        assert "channel:ch2" in h.app.sio.rooms(c.get_sid())


async def test_join_note_access(tmp_path):
    async with running(tmp_path) as h:
        a, b, c = await setup_channel(h)
        await h.api("PUT", "/api/v1/notes/n1", {"owner": "a", "read": ["b"], "write": []})
        assert await a.call("join-note", {"note_id": "n1"}, timeout=5) == {"ok": True}
        assert await b.call("join-note", {"note_id": "n1"}, timeout=5) == {"ok": True}
        assert (await c.call("join-note", {"note_id": "n1"}, timeout=5))["error"] == "forbidden"
        assert (await c.call("join-note", {"note_id": "zz"}, timeout=5))["error"] == "not_found"
        await h.api("POST", "/api/v1/emit", {"event": "note-events", "data": {"n": 1},
                                              "to": {"rooms": ["note:n1"]}})
        assert await b.rec.wait_for("note-events") == {"n": 1}
        # revoking b's access removes its session from the note room at once
        await h.api("PUT", "/api/v1/notes/n1", {"owner": "a", "read": [], "write": []})
        assert "note:n1" not in h.app.sio.rooms(b.get_sid())
        assert "note:n1" in h.app.sio.rooms(a.get_sid())


async def test_heartbeat_coalesced_and_usage(tmp_path):
    ini = "[state]\nlast_active_flush_interval = 0.2\n[limits]\nusage_ttl = 0.5\n"
    async with running(tmp_path, ini) as h:
        a, b, c = await setup_channel(h)
        writes = []
        store = h.app.backend.store
        original = store.set_last_active

        async def counting(times):
            writes.append(dict(times))
            await original(times)
        store.set_last_active = counting
        for _ in range(20):
            await a.emit("heartbeat", {})
        await asyncio.sleep(0.6)
        assert 1 <= len(writes) <= 3, writes  # 20 beats, at most a few batched writes
        status, body = await h.api("GET", "/api/v1/users/a")
        assert body["last_active_at"] > 0
        # usage: broadcast on change, expires after the ttl
        await a.emit("usage", {"model": "llama3", "chat_id": "c1"})
        assert await b.rec.wait_for("usage", lambda d: d["models"] == ["llama3"])
        assert (await h.api("GET", "/api/v1/usage"))[1] == {"models": ["llama3"]}
        assert await b.rec.wait_for("usage", lambda d: d["models"] == [], timeout=3)
        assert (await h.api("GET", "/api/v1/usage"))[1] == {"models": []}


MALFORMED = {
    "user-join": ["str", 5, [1], {"auth": "x"}, {"auth": {"token": 5}}],
    "join-channels": [None, "x", {"auth": []}],
    "join-note": [None, {}, {"note_id": 5}, {"note_id": ""}, {"note_id": "x" * 1000}],
    "heartbeat": ["x", [1]],
    "usage": [None, {}, {"model": 3}, {"model": "m", "chat_id": 7}],
    "events:channel": [None, {}, {"channel_id": "ch1"}, {"channel_id": "ch1", "data": "x"},
                       {"channel_id": "ch1", "data": {"type": 5}},
                       {"channel_id": "ch1", "data": {"type": "explode"}},
                       {"channel_id": ["ch1"], "data": {"type": "typing"}}],
    "events:chat": [None, {"chat_id": "c"}, {"chat_id": "c", "data": {"type": "other"}},
                    {"chat_id": 5, "data": {"type": "join"}}],
    "no-such-event": [{}],
}


async def test_malformed_payloads_get_error_acks_and_change_nothing(tmp_path):
    async with running(tmp_path) as h:
        a, b, c = await setup_channel(h)
        store = h.app.backend.store
        before_rooms = sorted(h.app.sio.rooms(a.get_sid()))
        for event, payloads in MALFORMED.items():
            for payload in payloads:
                ack = await a.call(event, payload, timeout=5)
                assert isinstance(ack, dict) and ack["error"] == "bad_request", (event, payload, ack)
                assert ack["message"]
        # without an ack, the failure comes back as an `error` event
        await a.emit("join-note", {"note_id": 5})
        err = await a.rec.wait_for("error")
        assert err["error"] == "bad_request" and err["event"] == "join-note"
        assert a.connected
        assert sorted(h.app.sio.rooms(a.get_sid())) == before_rooms
        assert await store.get_channel_read("ch1", "a") is None
        assert (await h.api("GET", "/api/v1/usage"))[1] == {"models": []}
        assert b.rec.of("events:channel") == []
        # the connection still works normally
        assert await a.call("user-join", {}, timeout=5) == {"id": "a", "name": "Ann"}


async def test_internal_error_is_contained(tmp_path):
    async with running(tmp_path) as h:
        a, b, c = await setup_channel(h)

        async def broken(*args):
            raise RuntimeError("disk on fire")
        h.app.backend.store.channels_of_user = broken
        ack = await a.call("join-channels", {}, timeout=5)
        assert ack == {"error": "internal", "message": "internal error"}
        assert a.connected
