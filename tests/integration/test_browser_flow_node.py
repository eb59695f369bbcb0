"""The open-webui browser flow, driven by the real npm socket.io-client.

The options are those of open-webui's frontend (src/lib/stores, setupSocket): path
/ws/socket.io, websocket only or polling → websocket, auth {token}, reconnection.
"""
import asyncio

import pytest

from tests.support.appliance import running
from tests.support.node_client import NodeDriverError
from tests.support.node_fixtures import node_driver, node_driver_factory  # noqa: F401

pytestmark = pytest.mark.asyncio

OPEN_WEBUI = {"path": "/ws/socket.io", "reconnection": False, "forceNew": True}


def opts(token, websocket_only=True):
    return {**OPEN_WEBUI, "auth": {"token": token},
            "transports": ["websocket"] if websocket_only else ["polling", "websocket"]}


@pytest.mark.parametrize("websocket_only", [True, False])
async def test_refusal_codes_seen_by_node_client(tmp_path, node_driver, websocket_only):
    async with running(tmp_path) as h:
        await h.user("pend", role="pending")
        await h.user("off", disabled=True)
        cases = {"": "token_missing", "garbage": "token_invalid",
                 h.token("x", expires=-3600): "token_expired", h.token("nobody"): "user_unknown",
                 h.token("pend"): "user_pending", h.token("off"): "user_disabled"}
        for i, (token, code) in enumerate(cases.items()):
            with pytest.raises(NodeDriverError) as err:
                await node_driver.connect(f"r{i}", h.url, **opts(token, websocket_only))
            assert err.value.reply.get("connect_error") == code, err.value.reply
        await asyncio.sleep(0.1)
        assert h.app.gateway.identities == {}


@pytest.mark.parametrize("websocket_only", [True, False])
async def test_open_webui_flow(tmp_path, node_driver, websocket_only):
    async with running(tmp_path) as h:
        tok_a = await h.user("a", "Ann")
        tok_b = await h.user("b", "Bob")
        tok_c = await h.user("c", "Cat")
        await h.api("PUT", "/api/v1/channels/ch", {"members": ["a", "b"]})
        a = await node_driver.connect("a", h.url, **opts(tok_a, websocket_only))
        b = await node_driver.connect("b", h.url, **opts(tok_b, websocket_only))
        c = await node_driver.connect("c", h.url, **opts(tok_c, websocket_only))
        if not websocket_only:
            assert await a.wait_upgrade() == "websocket"
        for sock, tok, user in ((a, tok_a, {"id": "a", "name": "Ann"}),
                                (b, tok_b, {"id": "b", "name": "Bob"}),
                                (c, tok_c, {"id": "c", "name": "Cat"})):
            assert (await sock.emit("user-join", {"auth": {"token": tok}}))[0] == user
        await a.emit("heartbeat", {}, ack=False)
        await a.emit("usage", {"model": "gpt-x", "chat_id": "chat1"}, ack=False)
        args = await c.wait_for("usage", lambda args: args[0]["models"] == ["gpt-x"])
        assert args[0] == {"models": ["gpt-x"]}
        await a.emit("events:channel", {"channel_id": "ch", "message_id": None,
                                        "data": {"type": "typing", "data": {"typing": True}}},
                     ack=False)
        got = await b.wait_for("events:channel")
        assert got[0]["user"] == {"id": "a", "name": "Ann", "role": "user"}
        assert got[0]["data"] == {"type": "typing", "data": {"typing": True}}
        # a backend streams a chat completion to the user's tabs
        for i, text in enumerate(("Hel", "Hello", "Hello!")):
            await h.api("POST", "/api/v1/emit", {"event": "events", "to": {"users": ["b"]},
                        "data": {"chat_id": "c1", "message_id": "m1", "data": {
                            "type": "chat:completion",
                            "data": {"content": text, "done": i == 2}}}})
        done = await b.wait_for("events", lambda args: args[0]["data"]["data"]["done"])
        assert done[0]["data"]["data"]["content"] == "Hello!"
        await asyncio.sleep(0.2)
        assert not c.received("events:channel")
        assert not a.received("events") and not c.received("events")
        assert await a.transport() == "websocket"


async def test_disconnect_reaches_node_client(tmp_path, node_driver):
    async with running(tmp_path) as h:
        tok = await h.user("a")
        sock = await node_driver.connect("a", h.url, **opts(tok, websocket_only=False))
        await h.api("POST", "/api/v1/users/a/disconnect")
        assert await sock.wait_disconnect() == "io server disconnect"
