"""The HTTP API for backends (protocol §5.1-5.3, 5.5), against live sessions."""
import asyncio

import pytest

from tests.support.appliance import running

pytestmark = pytest.mark.asyncio


async def three_users(h):
    toks = {u: await h.user(u, u.upper()) for u in ("a", "b", "c")}
    clients = {u: await h.connect(t) for u, t in toks.items()}
    a2 = await h.connect(toks["a"], transports=("polling",))  # a second tab of a
    return toks, clients, a2


async def test_api_key_required_and_errors(tmp_path):
    async with running(tmp_path) as h:
        emit = {"event": "x", "data": 1, "to": {"all": True}}
        assert (await h.api("POST", "/api/v1/emit", emit, key=None))[0] == 401
        status, body = await h.api("POST", "/api/v1/emit", emit, key="wrong")
        assert status == 401 and body["error"] == "unauthorized"
        for path in ("/api/v1/presence", "/api/v1/usage", "/api/v1/users/a"):
            assert (await h.api("GET", path, key=None))[0] == 401
        status, body = await h.api("POST", "/api/v1/emit", raw=b"{not json")
        assert status == 400 and body["error"] == "bad_request"
        for bad in ([], {"event": "", "to": {"all": True}}, {"event": "x", "to": {}},
                    {"event": "x", "to": {"users": "a"}}, {"event": "x", "to": {"all": "yes"}}):
            status, body = await h.api("POST", "/api/v1/emit", bad)
            assert status == 400 and body["message"], bad
        assert (await h.api("GET", "/api/v1/users/nobody"))[0] == 404
        assert (await h.api("DELETE", "/api/v1/channels/none"))[0] == 404
        assert (await h.api("PATCH", "/api/v1/channels/none/members", {"add": ["a"]}))[0] == 404
        assert (await h.api("GET", "/api/v1/nowhere"))[0] == 404
        assert (await h.api("PUT", "/api/v1/users/a", {"name": "A", "role": "root"}))[0] == 400
        assert (await h.api("GET", "/healthz", key=None)) == (200, {"status": "ok"})
        assert (await h.api("GET", "/readyz", key=None)) == (200, {"status": "ready"})


async def test_emit_to_users_rooms_sids_all(tmp_path):
    async with running(tmp_path) as h:
        toks, cl, a2 = await three_users(h)
        await h.api("POST", "/api/v1/emit", {"event": "events", "data": {"n": 1},
                                              "to": {"users": ["a"]}})
        assert await cl["a"].rec.wait_for("events") == {"n": 1}
        assert await a2.rec.wait_for("events") == {"n": 1}
        await h.api("POST", "/api/v1/emit", {"event": "only-c", "data": 2,
                                              "to": {"sids": [cl["c"].get_sid()]}})
        assert await cl["c"].rec.wait_for("only-c") == 2
        # union of targets: a session in two of them gets one copy; skip_sids honoured
        await h.api("POST", "/api/v1/emit", {"event": "u", "data": 3,
                                              "to": {"users": ["a", "b"],
                                                     "sids": [cl["b"].get_sid()]},
                                              "skip_sids": [a2.get_sid()]})
        await cl["b"].rec.wait_for("u")
        await cl["a"].rec.wait_for("u")
        await h.api("POST", "/api/v1/emit", {"event": "all", "data": 4, "to": {"all": True}})
        for client in (*cl.values(), a2):
            await client.rec.wait_for("all")
        await asyncio.sleep(0.2)
        assert cl["b"].rec.of("events") == [] and cl["c"].rec.of("events") == []
        assert cl["a"].rec.of("only-c") == []
        assert len(cl["b"].rec.of("u")) == 1 and a2.rec.of("u") == []


async def test_channel_messages_reach_members_only_and_follow_membership(tmp_path):
    async with running(tmp_path) as h:
        toks, cl, a2 = await three_users(h)
        await h.api("PUT", "/api/v1/channels/ch", {"members": ["a", "b"]})
        # membership took effect on live sessions at once, without user-join
        payload = {"channel_id": "ch", "message_id": "m1",
                   "data": {"type": "message", "data": {"content": "hi"}},
                   "user": {"id": "a", "name": "A"}}
        await h.api("POST", "/api/v1/emit", {"event": "events:channel", "data": payload,
                                              "to": {"rooms": ["channel:ch"]}})
        for client in (cl["a"], a2, cl["b"]):
            assert await client.rec.wait_for("events:channel") == payload
        await h.api("PATCH", "/api/v1/channels/ch/members", {"add": ["c"], "remove": ["b"]})
        await h.api("POST", "/api/v1/emit", {"event": "second", "data": 1,
                                              "to": {"rooms": ["channel:ch"]}})
        await cl["c"].rec.wait_for("second")
        await cl["a"].rec.wait_for("second")
        await h.api("DELETE", "/api/v1/channels/ch")
        await h.api("POST", "/api/v1/emit", {"event": "third", "data": 1,
                                              "to": {"rooms": ["channel:ch"]}})
        await h.api("POST", "/api/v1/emit", {"event": "marker", "data": 1, "to": {"all": True}})
        for client in cl.values():
            await client.rec.wait_for("marker")
        assert cl["c"].rec.of("events:channel") == []
        assert cl["b"].rec.of("second") == []
        assert all(client.rec.of("third") == [] for client in cl.values())
        assert (await h.api("GET", "/api/v1/channels/ch"))[0] == 404


async def test_room_membership_api(tmp_path):
    async with running(tmp_path) as h:
        toks, cl, a2 = await three_users(h)
        status, body = await h.api("POST", "/api/v1/rooms/custom:1/members", {"users": ["a"]})
        assert status == 200 and body["sessions"] == 2
        await h.api("POST", "/api/v1/emit", {"event": "r", "data": 1, "to": {"rooms": ["custom:1"]}})
        await a2.rec.wait_for("r")
        await h.api("DELETE", "/api/v1/rooms/custom:1/members", {"users": ["a"]})
        await h.api("POST", "/api/v1/emit", {"event": "r", "data": 2, "to": {"rooms": ["custom:1"]}})
        await h.api("POST", "/api/v1/emit", {"event": "marker", "data": 1, "to": {"users": ["a"]}})
        await a2.rec.wait_for("marker")
        assert a2.rec.of("r") == [1]


async def test_batch_is_delivered_in_order(tmp_path):
    async with running(tmp_path) as h:
        toks, cl, a2 = await three_users(h)
        batch = [{"event": "events", "data": {"i": i}, "to": {"users": ["a"]}} for i in range(200)]
        status, body = await h.api("POST", "/api/v1/emit/batch", batch)
        assert status == 202 and body == {"queued": 200}
        for client in (cl["a"], a2):
            await client.rec.wait_for("events", lambda d: d["i"] == 199)
            assert [d["i"] for d in client.rec.of("events")] == list(range(200))
        # one malformed entry: nothing is sent
        bad = batch[:3] + [{"event": "events"}]
        status, body = await h.api("POST", "/api/v1/emit/batch", bad)
        assert status == 400 and "#3" in body["message"]
        await asyncio.sleep(0.2)
        assert len(cl["a"].rec.of("events")) == 200


async def test_call_and_its_timeout(tmp_path):
    async with running(tmp_path) as h:
        toks, cl, a2 = await three_users(h)
        cl["a"].on("ask", lambda data: {"answer": data["q"] * 2})
        status, body = await h.api("POST", "/api/v1/call", {
            "sid": cl["a"].get_sid(), "event": "ask", "data": {"q": 21}, "timeout_s": 5})
        assert (status, body) == (200, {"ack": {"answer": 42}})
        # a client that answers too late: 504 after the timeout, not unbounded

        async def slow(data):
            await asyncio.sleep(1.0)
            return "late"
        cl["b"].on("slow", slow)
        status, body = await h.api("POST", "/api/v1/call", {
            "sid": cl["b"].get_sid(), "event": "slow", "data": {}, "timeout_s": 0.3})
        assert status == 504 and body["error"] == "timeout"
        await asyncio.sleep(1.0)  # let the late answer arrive and be ignored
        status, body = await h.api("POST", "/api/v1/call", {"sid": "nope", "event": "ask"})
        assert status == 404
        status, body = await h.api("POST", "/api/v1/call", {"sid": "x", "event": "a",
                                                             "timeout_s": -1})
        assert status == 400


async def test_presence_and_directory(tmp_path):
    async with running(tmp_path) as h:
        toks, cl, a2 = await three_users(h)
        status, body = await h.api("GET", "/api/v1/presence")
        sessions = {u["id"]: u["sessions"] for u in body["users"]}
        assert sessions == {"a": 2, "b": 1, "c": 1}
        status, body = await h.api("GET", "/api/v1/users/a/presence")
        assert body["sessions"] == 2 and body["online"] and body["last_active_at"]
        await a2.disconnect()
        await cl["c"].disconnect()
        await asyncio.sleep(0.2)
        status, body = await h.api("GET", "/api/v1/presence")
        assert {u["id"]: u["sessions"] for u in body["users"]} == {"a": 1, "b": 1}
        # directory: user round trip, delete disconnects
        status, body = await h.api("PUT", "/api/v1/users/d", {"name": "Dee", "role": "admin"})
        assert status == 200 and body["role"] == "admin"
        status, body = await h.api("GET", "/api/v1/users/d")
        assert body["name"] == "Dee" and body["disabled"] is False
        status, body = await h.api("DELETE", "/api/v1/users/b")
        assert status == 200
        for _ in range(100):
            if not cl["b"].connected:
                break
            await asyncio.sleep(0.05)
        assert not cl["b"].connected
        assert await h.refused(toks["b"]) == "user_unknown"
        # pending role disconnects and refuses
        await h.api("PUT", "/api/v1/users/a", {"name": "A", "role": "pending"})
        assert await h.refused(toks["a"]) == "user_pending"
