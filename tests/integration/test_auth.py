"""Authentication at connect (protocol §2), seen from python-socketio."""
import base64
import json
import time

import jwt
import pytest

from tests.support.appliance import SECRET, running

pytestmark = pytest.mark.asyncio


def unsigned(claims: dict) -> str:
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


@pytest.mark.parametrize("transports", [("websocket",), ("polling",)])
async def test_refusal_codes(tmp_path, transports):
    async with running(tmp_path) as h:
        await h.user("ok", "Okay")
        await h.user("pend", role="pending")
        await h.user("off", disabled=True)
        cases = {
            None: "token_missing",
            "": "token_missing",
            "garbage": "token_invalid",
            h.token("ok", expires=-3600): "token_expired",
            jwt.encode({"id": "ok"}, "another-secret-" + "y" * 64, algorithm="HS256"): "token_invalid",
            unsigned({"id": "ok"}): "token_invalid",
            jwt.encode({"id": "ok"}, SECRET, algorithm="HS512"): "token_invalid",  # not configured
            jwt.encode({"sub": "ok"}, SECRET, algorithm="HS256"): "token_invalid",  # no id
            h.token("nobody"): "user_unknown",
            h.token("pend"): "user_pending",
            h.token("off"): "user_disabled",
            "x" * 20000: "token_invalid",
        }
        for token, code in cases.items():
            assert await h.refused(token, transports) == code, (token, code)
        # the refused connections left nothing behind
        assert h.app.gateway.identities == {}
        assert h.app.sio.engine.sessions == {} or all(
            s.closed for s in h.app.sio.engine.sessions.values())
        # and a valid token still works on the same server
        client = await h.connect(h.token("ok"), transports)
        assert client.connected


async def test_expiry_leeway_and_identity(tmp_path):
    async with running(tmp_path, "[auth]\nleeway = 30\n") as h:
        await h.user("u1", "Ann")
        # expired 10 s ago, within the 30 s leeway: accepted
        client = await h.connect(h.token("u1", expires=-10))
        sid = client.get_sid()
        assert h.app.gateway.identities[sid].id == "u1"
        assert "user:u1" in h.app.sio.rooms(sid)


async def test_payload_token_of_another_user_is_refused(tmp_path):
    async with running(tmp_path) as h:
        tok1 = await h.user("u1", "Ann")
        tok2 = await h.user("u2", "Bob")
        client = await h.connect(tok1)
        ack = await client.call("user-join", {"auth": {"token": tok2}}, timeout=5)
        assert ack["error"] == "forbidden"
        ack = await client.call("user-join", {"auth": {"token": "garbage"}}, timeout=5)
        assert ack["error"] == "forbidden"
        # identity did not change
        assert h.app.gateway.identities[client.get_sid()].id == "u1"
        assert await client.call("user-join", {"auth": {"token": tok1}}, timeout=5) == {
            "id": "u1", "name": "Ann"}


async def test_trust_token_claims(tmp_path):
    async with running(tmp_path, "[auth]\ntrust_token_claims = true\n") as h:
        client = await h.connect(h.token("ghost", name="Ghost", role="admin"))
        ack = await client.call("user-join", {}, timeout=5)
        assert ack == {"id": "ghost", "name": "Ghost"}
        assert h.app.gateway.identities[client.get_sid()].role == "admin"
    async with running(tmp_path / "b") as h:
        assert await h.refused(h.token("ghost", name="Ghost")) == "user_unknown"


async def test_revocation_disconnects_all_sessions(tmp_path):
    async with running(tmp_path) as h:
        tok = await h.user("u1")
        c1 = await h.connect(tok)
        c2 = await h.connect(tok, transports=("polling",))
        status, body = await h.api("POST", "/api/v1/users/u1/disconnect")
        assert status == 200 and body["sessions"] == 2
        deadline = time.monotonic() + 5
        while (c1.connected or c2.connected) and time.monotonic() < deadline:
            await c1.sleep(0.05)
        assert not c1.connected and not c2.connected
        # disabling the user refuses reconnects
        assert (await h.api("PUT", "/api/v1/users/u1", {"name": "U", "disabled": True}))[0] == 200
        assert await h.refused(tok) == "user_disabled"
