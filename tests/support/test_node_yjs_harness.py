"""Self-tests of the Node client harness: yjs commands and a real
socket.io-client 4.8 against the npm socket.io 4.8 reference server."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.node_client import NodeDriverError, from_wire, to_wire
from tests.support.node_fixtures import node_driver, node_driver_factory, node_reference_server  # noqa: F401

PATH = "/ws/socket.io"


def test_bytes_codec_roundtrip():
    value = {"a": [b"\x00\xff", {"b": bytearray(b"xy")}], "c": 1, "d": None}
    wire = to_wire(value)
    assert wire == {"a": [{"$bytes": [0, 255]}, {"b": {"$bytes": [120, 121]}}], "c": 1, "d": None}
    assert from_wire(wire) == {"a": [b"\x00\xff", {"b": b"xy"}], "c": 1, "d": None}


@pytest.mark.asyncio
async def test_yjs_update_applies_to_second_doc(node_driver):
    drv = node_driver
    assert drv.versions["yjs"].startswith("13.6.")
    await drv.ydoc_new("a")
    await drv.ydoc_new("b")
    u1 = await drv.ydoc_insert("a", 0, "hello", text_name="t")
    u2 = await drv.ydoc_insert("a", 5, " world", text_name="t")
    assert isinstance(u1, bytes) and u1
    await drv.ydoc_apply("b", u1)
    assert await drv.ydoc_text("b", "t") == "hello"
    await drv.ydoc_apply("b", u2)
    assert await drv.ydoc_text("b", "t") == "hello world"
    assert await drv.ydoc_text("a", "t") == "hello world"

    # full state / state vector round trip into a third doc
    await drv.ydoc_new("c")
    await drv.ydoc_apply("c", await drv.ydoc_state("a"))
    assert await drv.ydoc_text("c", "t") == "hello world"
    assert await drv.ydoc_state_vector("c") == await drv.ydoc_state_vector("a")
    # a diff against an up-to-date state vector applies as a no-op
    await drv.ydoc_apply("c", await drv.ydoc_state("a", await drv.ydoc_state_vector("c")))
    assert await drv.ydoc_text("c", "t") == "hello world"


@pytest.mark.asyncio
async def test_driver_survives_bad_commands(node_driver):
    drv = node_driver
    with pytest.raises(NodeDriverError, match="unknown command"):
        await drv.request("no_such_command")
    with pytest.raises(NodeDriverError, match="no ydoc named"):
        await drv.ydoc_text("missing")
    with pytest.raises(NodeDriverError, match="no client named"):
        await drv.request("emit", name="ghost", ev="x", args=[])
    await drv.ydoc_new("d")
    with pytest.raises(NodeDriverError):
        await drv.ydoc_apply("d", b"\x01\x02\x03")
    assert (await drv.request("ping"))["pong"] is True


@pytest.mark.asyncio
async def test_socketio_client_against_reference_server(node_driver, node_reference_server):
    drv, srv = node_driver, node_reference_server
    assert srv.version.startswith("4.8.")
    assert drv.versions["socket.io-client"].startswith("4.8.")

    sock = await drv.connect(
        "alice",
        srv.url,
        path=PATH,
        transports=["polling", "websocket"],
        auth={"token": "t1"},
        reconnection=False,
        forceNew=True,
    )
    assert sock.sid
    # the engine opens on polling; the upgrade may finish before or after 'connect'
    assert (await sock.wait_notification("open", timeout=5))["transport"] == "polling"
    assert sock.connect_transport in ("polling", "websocket")

    # 'hello' is emitted by the server on connect; it may have arrived before this call
    (hello,) = await sock.wait_for("hello", timeout=5)
    assert hello == {"sid": sock.sid, "auth": {"token": "t1"}}
    assert sock.received("hello") == [[hello]]

    # polling -> websocket upgrade
    assert await sock.wait_upgrade(timeout=5) == "websocket"
    assert await sock.transport() == "websocket"

    # emit with ack: every ack argument comes back, binary included
    ack = await sock.emit("echo", {"n": 1}, b"\x00\x01\xfe", "s", ack=True, timeout=5)
    assert ack == [{"n": 1}, b"\x00\x01\xfe", "s"]

    # emit without ack: the server emits 'echo' back
    assert await sock.emit("echo", "x", {"bin": b"\x07"}, ack=False) is None
    args = await sock.wait_for("echo", predicate=lambda a: a[0] == "x", timeout=5)
    assert args == ["x", {"bin": b"\x07"}]

    # a wait that cannot be satisfied is bounded and says what arrived
    with pytest.raises(asyncio.TimeoutError, match="no recv 'never'.*recv:hello"):
        await sock.wait_for("never", timeout=0.3)

    await sock.disconnect()


@pytest.mark.asyncio
async def test_websocket_only_and_connect_error(node_driver, node_reference_server):
    drv, srv = node_driver, node_reference_server
    bob = await drv.connect("bob", srv.url, path=PATH, transports=["websocket"], reconnection=False, forceNew=True)
    assert bob.connect_transport == "websocket"
    assert await bob.emit("echo", 42) == [42]

    with pytest.raises(NodeDriverError, match="unauthorized") as exc_info:
        await drv.connect(
            "eve", srv.url, path=PATH, transports=["websocket"], auth={"token": "bad"},
            reconnection=False, forceNew=True,
        )
    assert exc_info.value.reply["data"] == {"code": 401}

    # server going away -> disconnect notification with the reason
    await srv.close()
    assert await bob.wait_disconnect(timeout=5) == "transport close"
