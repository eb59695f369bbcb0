"""Transport options an operator sets (protocol §1): nodelay, compression, proxies, polling."""
import asyncio
import socket

import pytest
import tornado.websocket

from tests.support.appliance import running
from tests.support.node_fixtures import node_driver, node_driver_factory  # noqa: F401

pytestmark = pytest.mark.asyncio


def only_session(h):
    sessions = list(h.app.sio.engine.sessions.values())
    assert len(sessions) == 1
    return sessions[0]


async def test_tcp_nodelay_on_websocket_and_polling(tmp_path):
    async with running(tmp_path) as h:
        c = await h.connect(await h.user("a"))
        ws = only_session(h).ws
        sock = ws.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        await c.disconnect()
        await asyncio.sleep(0.1)
        # every accepted connection (polling requests, API calls) gets it too
        seen = []
        original = h.app.http.handle_stream

        def spy(stream, address):
            result = original(stream, address)
            seen.append(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            return result
        h.app.http.handle_stream = spy
        await h.connect(await h.user("b"), transports=("polling",))
        assert seen and all(flag == 1 for flag in seen)


async def test_tcp_nodelay_stays_on_for_the_next_requests_of_a_connection(tmp_path):
    # Tornado turns Nagle back on after every response; a streamed response on a reused
    # connection (nginx's upstream keepalive: relay streams, SSE) would then wait for the
    # peer's delayed ACK between its chunks. The second request finds it still off.
    async with running(tmp_path) as h:
        streams = []
        original = h.app.http.handle_stream

        def spy(stream, address):
            streams.append(stream)
            return original(stream, address)
        h.app.http.handle_stream = spy
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", h.app.port), 5)
        try:
            flags = []
            for _ in range(2):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), 5)
                await asyncio.sleep(0.05)  # the request is finished on the server's side too
                assert len(streams) == 1  # one connection, kept alive
                flags.append(streams[0].socket.getsockopt(socket.IPPROTO_TCP,
                                                          socket.TCP_NODELAY))
            assert flags == [1, 1]
        finally:
            writer.close()


@pytest.mark.parametrize("enabled", [False, True])
async def test_compression_is_configurable_and_off_by_default(tmp_path, enabled):
    ini = "[server]\nwebsocket_compression = true\n" if enabled else ""
    async with running(tmp_path, ini) as h:
        url = h.url.replace("http", "ws") + "/ws/socket.io/?EIO=4&transport=websocket"
        conn = await asyncio.wait_for(tornado.websocket.websocket_connect(
            url, compression_options={}), 5)
        try:
            extensions = conn.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in extensions) is enabled
            opened = await asyncio.wait_for(conn.read_message(), 5)
            assert opened.startswith("0{")
        finally:
            conn.close()


@pytest.mark.parametrize("trust", [False, True])
async def test_client_address_behind_a_proxy(tmp_path, trust):
    # believed from loopback by default (nginx on the same box); not from a peer outside
    # forwarded_allow_ips (the tests connect from loopback, so the list names another)
    ini = "" if trust else "[server]\nforwarded_allow_ips = 192.0.2.7\n"
    async with running(tmp_path, ini) as h:
        tok = await h.user("a")
        for transports in (("websocket",), ("polling",)):
            c = await h.connect(tok, transports=transports,
                                headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"})
            environ = h.app.sio.get_environ(c.get_sid())
            assert environ["REMOTE_ADDR"] == ("203.0.113.9" if trust else "127.0.0.1")
            await c.disconnect()


async def test_polling_only_when_websocket_disabled(tmp_path, node_driver):
    async with running(tmp_path, "[server]\nenable_websocket = false\n") as h:
        tok = await h.user("a", "Ann")
        sock = await node_driver.connect("a", h.url, path="/ws/socket.io", reconnection=False,
                                         transports=["polling", "websocket"], auth={"token": tok})
        assert (await sock.emit("user-join", {}))[0] == {"id": "a", "name": "Ann"}
        await asyncio.sleep(0.5)  # no upgrade is offered, none happens
        assert await sock.transport() == "polling"
        status, body = await h.api("POST", "/api/v1/emit", {"event": "x", "data": 1,
                                                             "to": {"users": ["a"]}})
        args = await sock.wait_for("x")
        # the offset of connection state recovery follows (socket.io 4.6+)
        assert args[0] == 1 and len(args) == 2 and isinstance(args[1], str)


async def test_max_message_size_on_both_transports(tmp_path):
    async with running(tmp_path, "[server]\nmax_message_bytes = 2048\n") as h:
        tok = await h.user("a")
        for transports in (("websocket",), ("polling",)):
            c = await h.connect(tok, transports=transports)
            await c.emit("heartbeat", {"pad": "x" * 4096})
            for _ in range(100):
                if not c.connected:
                    break
                await asyncio.sleep(0.05)
            assert not c.connected, transports
        # a normal client is unaffected
        c = await h.connect(tok)
        assert await c.call("user-join", {}, timeout=5)
