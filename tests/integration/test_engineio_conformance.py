"""Engine.IO v4 conformance of our engine (rt/engine), driven over raw HTTP and raw websockets.

Written from the public Engine.IO v4 protocol specification and the reference test suite
(socketio/engine.io-protocol, test-suite/test-suite.js), plus the appliance's own wire
contract (docs/protocol.md §1). The appliance speaks Socket.IO above Engine.IO, so where a
test needs the server to answer a message it sends a Socket.IO packet (a CONNECT with a
valid token, or an event to a test-only echo handler) instead of the reference suite's
echo server.

Every wait is bounded (T); timing assertions check the protocol's deadlines with generous
tolerances, never speed.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from tests.support.appliance import running

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

T = 5.0  # bound of any single wait
SEP = "\x1e"  # record separator between the packets of one polling payload
PING_INTERVAL, PING_TIMEOUT = 0.3, 0.2
FAST = f"[server]\nping_interval = {PING_INTERVAL}\nping_timeout = {PING_TIMEOUT}\n"
EARLY = 0.03  # timers may fire this much early (clock granularity)
LATE = 1.0  # how late a deadline may be honoured on a loaded machine
ECHO = "conformance:echo"  # a test-only event whose ack returns its arguments


# ---------------------------------------------------------------------------- raw client
class Raw:
    """Raw Engine.IO client pieces: HTTP requests and websockets to the socket path."""

    def __init__(self, h):
        self.h = h
        self.http = AsyncHTTPClient(force_instance=True, max_clients=32)
        self.base = h.url + h.path + "/"
        self.ws_base = "ws" + self.base[len("http"):]
        self.sockets: list[WebSocketClientConnection] = []

    def close(self) -> None:
        for ws in self.sockets:
            ws.close()
        self.http.close()

    # ------------------------------------------------------------------ HTTP
    async def request(self, method: str, query: str, body: str | bytes | None = None,
                      headers: dict | None = None, timeout: float = T) -> HTTPResponse:
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        req = HTTPRequest(self.base + "?" + query, method=method, headers=headers, body=body,
                          allow_nonstandard_methods=True, request_timeout=timeout)
        return await self.http.fetch(req, raise_error=False)

    async def get(self, query: str, **kw: Any) -> HTTPResponse:
        return await self.request("GET", query, **kw)

    async def post(self, query: str, body: str | bytes, **kw: Any) -> HTTPResponse:
        return await self.request("POST", query, body, **kw)

    async def open_polling(self, query: str = "EIO=4&transport=polling", **kw: Any) -> dict:
        resp = await self.get(query, **kw)
        assert resp.code == 200, (resp.code, resp.body)
        text = resp.body.decode()
        assert text.startswith("0"), text
        return orjson.loads(text[1:])

    async def poll(self, sid: str, timeout: float = T) -> list[str]:
        """One long-polling GET: the packets of its payload."""
        resp = await self.get(f"EIO=4&transport=polling&sid={sid}", timeout=timeout)
        assert resp.code == 200, (resp.code, resp.body)
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.body.decode().split(SEP)

    async def send(self, sid: str, *packets: str) -> None:
        resp = await self.post(f"EIO=4&transport=polling&sid={sid}", SEP.join(packets))
        assert resp.code == 200, (resp.code, resp.body)
        assert resp.body == b"ok"

    async def poll_until(self, sid: str, count: int) -> list[str]:
        """Packets from successive GETs until `count` of them arrived."""
        got: list[str] = []
        deadline = time.monotonic() + T
        while len(got) < count:
            got += [p for p in await self.poll(sid, timeout=deadline - time.monotonic())
                    if p != "6"]
        return got

    # ------------------------------------------------------------------ websocket
    async def ws(self, query: str = "EIO=4&transport=websocket",
                 headers: dict | None = None) -> WebSocketClientConnection:
        req = HTTPRequest(self.ws_base + "?" + query, headers=headers, connect_timeout=T,
                          request_timeout=T)
        conn = await asyncio.wait_for(websocket_connect(req), T)
        self.sockets.append(conn)
        return conn

    async def open_ws(self, **kw: Any) -> tuple[WebSocketClientConnection, dict]:
        conn = await self.ws(**kw)
        first = await recv(conn)
        assert isinstance(first, str) and first.startswith("0"), first
        return conn, orjson.loads(first[1:])

    async def ws_refused(self, query: str, headers: dict | None = None) -> HTTPClientError:
        """A websocket the server must refuse with an HTTP error (never a 101)."""
        with pytest.raises(HTTPClientError) as info:
            await self.ws(query, headers)
        return info.value


async def recv(conn: WebSocketClientConnection, timeout: float = T) -> str | bytes | None:
    """The next websocket message; None once the connection is closed."""
    return await asyncio.wait_for(conn.read_message(), timeout)


async def recv_closed(conn: WebSocketClientConnection, timeout: float = T) -> list:
    """Read until the server closes the websocket; the messages seen before the close."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await recv(conn, max(0.01, deadline - time.monotonic()))
        if msg is None:
            return seen
        seen.append(msg)


def error_body(resp: HTTPResponse) -> dict:
    assert resp.headers["Content-Type"].startswith("application/json")
    return orjson.loads(resp.body)


async def eventually(predicate, timeout: float = T, step: float = 0.01) -> float:
    """Wait until predicate() holds; the time it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - start


def install_echo(h) -> None:
    """A test-only Socket.IO event whose ack returns its arguments (the reference suite's
    `message-with-ack`); registered on the running server, in-process."""
    async def echo(sid, *args):
        return args  # a tuple: one ack argument per event argument
    h.app.sio.on(ECHO, echo)


# Connection state recovery (on by default) adds an offset to every event; the exact wire
# forms of the transport are checked without it (tests/integration/test_recovery*.py cover it)
NO_RECOVERY = "[recovery]\nenabled = false\n"


@contextlib.asynccontextmanager
async def raw_appliance(tmp_path, ini: str = ""):
    async with running(tmp_path, ini=NO_RECOVERY + ini) as h:
        raw = Raw(h)
        try:
            yield h, raw
        finally:
            raw.close()


def connect_packet(token: str) -> str:
    return "40" + orjson.dumps({"token": token}).decode()


OPEN_KEYS = {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}


# ============================================================================ handshake
async def test_polling_handshake_open_packet(tmp_path):
    async with raw_appliance(tmp_path, FAST) as (h, raw):
        resp = await raw.get("EIO=4&transport=polling")
        assert resp.code == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        body = resp.body.decode()
        assert body.startswith("0") and SEP not in body  # the open packet alone
        value = orjson.loads(body[1:])
        assert set(value) == OPEN_KEYS
        assert isinstance(value["sid"], str) and value["sid"]
        assert value["upgrades"] == ["websocket"]
        # fractional seconds advertised exactly, in milliseconds
        assert value["pingInterval"] == 300
        assert value["pingTimeout"] == 200
        assert value["maxPayload"] == 1_000_000
        # every handshake is a new session
        assert (await raw.open_polling())["sid"] != value["sid"]


async def test_handshake_values_from_config(tmp_path):
    ini = "[server]\nping_interval = 2.5\nping_timeout = 1.25\nmax_message_bytes = 4096\n"
    async with raw_appliance(tmp_path, ini) as (h, raw):
        value = await raw.open_polling()
        assert (value["pingInterval"], value["pingTimeout"], value["maxPayload"]) == (
            2500, 1250, 4096)


async def test_default_handshake_values(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        value = await raw.open_polling()
        assert (value["pingInterval"], value["pingTimeout"], value["maxPayload"]) == (
            25000, 20000, 1_000_000)


async def test_path_with_and_without_trailing_slash(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        for path in (h.path, h.path + "/"):
            resp = await raw.http.fetch(h.url + path + "?EIO=4&transport=polling",
                                        raise_error=False, request_timeout=T)
            assert resp.code == 200 and resp.body.startswith(b"0{"), (path, resp.code)


async def test_websocket_handshake_open_packet(tmp_path):
    async with raw_appliance(tmp_path, FAST) as (h, raw):
        conn, value = await raw.open_ws()
        assert set(value) == OPEN_KEYS
        assert isinstance(value["sid"], str) and value["sid"]
        assert value["upgrades"] == []  # already on the best transport
        assert (value["pingInterval"], value["pingTimeout"], value["maxPayload"]) == (
            300, 200, 1_000_000)
        assert value["sid"] in h.app.sio.engine.sessions


async def test_bad_protocol_version_is_refused(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        for query in ("transport=polling", "EIO=abc&transport=polling",
                      "EIO=3&transport=polling", "EIO=5&transport=polling"):
            resp = await raw.get(query)
            assert resp.code == 400, query
            assert error_body(resp) == {"code": 5, "message": "Unsupported protocol version"}
        for query in ("transport=websocket", "EIO=abc&transport=websocket",
                      "EIO=3&transport=websocket"):
            err = await raw.ws_refused(query)
            assert err.code == 400, query
        assert not h.app.sio.engine.sessions


async def test_bad_transport_is_refused(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        for query in ("EIO=4", "EIO=4&transport=abc", "EIO=4&transport=",
                      "EIO=4&transport=flashsocket"):
            resp = await raw.get(query)
            assert resp.code == 400, query
            assert error_body(resp) == {"code": 0, "message": "Transport unknown"}
        for query in ("EIO=4", "EIO=4&transport=abc"):
            err = await raw.ws_refused(query)
            assert err.code == 400, query
        assert not h.app.sio.engine.sessions


async def test_websocket_disabled(tmp_path):
    async with raw_appliance(tmp_path, "[server]\nenable_websocket = false\n") as (h, raw):
        value = await raw.open_polling()
        assert value["upgrades"] == []  # polling only: no upgrade offered
        err = await raw.ws_refused("EIO=4&transport=websocket")
        assert err.code == 400
        err = await raw.ws_refused(f"EIO=4&transport=websocket&sid={value['sid']}")
        assert err.code == 400
        resp = await raw.get("EIO=4&transport=websocket")
        assert resp.code == 400
        # the polling session is untouched by the refused upgrade
        assert value["sid"] in h.app.sio.engine.sessions


async def test_unknown_sid_is_refused(tmp_path):
    unknown = {"code": 1, "message": "Session ID unknown"}
    async with raw_appliance(tmp_path) as (h, raw):
        resp = await raw.get("EIO=4&transport=polling&sid=nope")
        assert resp.code == 400 and error_body(resp) == unknown
        resp = await raw.post("EIO=4&transport=polling&sid=nope", "40")
        assert resp.code == 400 and error_body(resp) == unknown
        err = await raw.ws_refused("EIO=4&transport=websocket&sid=nope")
        assert err.code == 400
        assert orjson.loads(err.response.body) == unknown


async def test_bad_handshake_method(tmp_path):
    bad_method = {"code": 2, "message": "Bad handshake method"}
    async with raw_appliance(tmp_path) as (h, raw):
        resp = await raw.post("EIO=4&transport=polling", "40")
        assert resp.code == 400 and error_body(resp) == bad_method
        # the reference suite: any method but GET opens no session
        for method in ("PUT", "DELETE", "PATCH"):
            resp = await raw.request(method, "EIO=4&transport=polling")
            assert resp.code == 400, method
            assert error_body(resp) == bad_method
        assert not h.app.sio.engine.sessions


async def test_websocket_transport_without_upgrade_header(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        resp = await raw.get("EIO=4&transport=websocket")
        assert resp.code == 400
        assert error_body(resp) == {"detail": "Invalid WebSocket upgrade request"}
        assert not h.app.sio.engine.sessions


async def test_refused_websocket_is_never_left_open(tmp_path):
    """A refused websocket gets an HTTP status on a raw socket, and the server closes it
    (no 101, no half-open socket for the client to hang on)."""
    async with raw_appliance(tmp_path) as (h, raw):
        host, port = urlsplit(h.url).hostname, urlsplit(h.url).port
        for query in ("EIO=3&transport=websocket", "EIO=4&transport=abc",
                      "EIO=4&transport=websocket&sid=nope"):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), T)
            try:
                writer.write((
                    f"GET {h.path}/?{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
                assert head.startswith(b"HTTP/1.1 400"), head
                assert b"\r\nupgrade:" not in head.lower()
            finally:
                writer.close()


# ---------------------------------------------------------------------------- CORS
CORS = "[server]\ncors_allow_origin = http://good.example\n"


async def test_cors_allowed_origin(tmp_path):
    async with raw_appliance(tmp_path, CORS) as (h, raw):
        good = {"Origin": "http://good.example"}
        resp = await raw.get("EIO=4&transport=polling", headers=good)
        assert resp.code == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "http://good.example"
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        sid = orjson.loads(resp.body[1:])["sid"]
        resp = await raw.post(f"EIO=4&transport=polling&sid={sid}", "3", headers=good)
        assert resp.code == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "http://good.example"
        conn, _ = await raw.open_ws(headers=good)
        # requests without Origin come from non-browser clients: CORS does not apply
        assert (await raw.get("EIO=4&transport=polling")).code == 200


async def test_cors_any_origin_by_default(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        origin = {"Origin": "https://chat.example.com"}
        resp = await raw.get("EIO=4&transport=polling", headers=origin)
        assert resp.code == 200
        # echoed rather than "*", which browsers refuse together with credentials
        assert resp.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
        await raw.open_ws(headers=origin)


async def test_cors_disallowed_origin(tmp_path):
    async with raw_appliance(tmp_path, CORS) as (h, raw):
        bad = {"Origin": "http://evil.example"}
        resp = await raw.get("EIO=4&transport=polling", headers=bad)
        assert resp.code == 400
        assert "Access-Control-Allow-Origin" not in resp.headers
        err = await raw.ws_refused("EIO=4&transport=websocket", headers=bad)
        assert err.code == 403
        assert not h.app.sio.engine.sessions
        # an existing session is not reachable from the wrong origin either
        sid = (await raw.open_polling())["sid"]
        resp = await raw.post(f"EIO=4&transport=polling&sid={sid}", "3", headers=bad)
        assert resp.code == 400
        err = await raw.ws_refused(f"EIO=4&transport=websocket&sid={sid}", headers=bad)
        assert err.code == 403


async def test_cors_preflight(tmp_path):
    async with raw_appliance(tmp_path, CORS) as (h, raw):
        resp = await raw.request("OPTIONS", "EIO=4&transport=polling", headers={
            "Origin": "http://good.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert resp.code in (200, 204)
        assert resp.headers["Access-Control-Allow-Origin"] == "http://good.example"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "content-type" in resp.headers["Access-Control-Allow-Headers"].lower()
        resp = await raw.request("OPTIONS", "EIO=4&transport=polling", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert resp.code == 400
        assert "Access-Control-Allow-Origin" not in resp.headers


# ============================================================================ heartbeat
async def test_polling_heartbeat_pong_keeps_session(tmp_path):
    async with raw_appliance(tmp_path, FAST) as (h, raw):
        start = time.monotonic()
        sid = (await raw.open_polling())["sid"]
        for _ in range(3):
            t0 = time.monotonic()
            assert await raw.poll(sid) == ["2"]
            # each ping comes one interval after the previous pong (or the handshake)
            assert PING_INTERVAL - EARLY <= time.monotonic() - t0 <= PING_INTERVAL + LATE
            await raw.send(sid, "3")
        # alive well past one interval + timeout
        assert time.monotonic() - start > PING_INTERVAL + PING_TIMEOUT
        assert sid in h.app.sio.engine.sessions
        await raw.send(sid, "3")  # a spare pong is harmless


async def test_polling_ping_timeout_closes_session(tmp_path):
    async with raw_appliance(tmp_path, FAST) as (h, raw):
        start = time.monotonic()
        sid = (await raw.open_polling())["sid"]
        assert await raw.poll(sid) == ["2"]
        # no pong: the waiting GET is answered with the close packet at the deadline
        assert await raw.poll(sid) == ["1"]
        elapsed = time.monotonic() - start
        deadline = PING_INTERVAL + PING_TIMEOUT
        assert deadline - EARLY <= elapsed <= deadline + LATE
        assert sid not in h.app.sio.engine.sessions
        resp = await raw.post(f"EIO=4&transport=polling&sid={sid}", "3")
        assert resp.code == 400 and error_body(resp)["code"] == 1
        resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
        assert resp.code == 400


async def test_polling_ping_timeout_without_any_request(tmp_path):
    """The reference suite's case: the client vanishes after the handshake."""
    async with raw_appliance(tmp_path, FAST) as (h, raw):
        start = time.monotonic()
        sid = (await raw.open_polling())["sid"]
        took = await eventually(lambda: sid not in h.app.sio.engine.sessions)
        elapsed = time.monotonic() - start
        assert elapsed >= PING_INTERVAL + PING_TIMEOUT - EARLY
        assert took <= PING_INTERVAL + PING_TIMEOUT + LATE
        resp = await raw.post(f"EIO=4&transport=polling&sid={sid}", "3")
        assert resp.code == 400


async def test_websocket_heartbeat_pong_keeps_session(tmp_path):
    async with raw_appliance(tmp_path, FAST) as (h, raw):
        start = time.monotonic()
        conn, value = await raw.open_ws()
        for _ in range(3):
            t0 = time.monotonic()
            assert await recv(conn) == "2"
            assert PING_INTERVAL - EARLY <= time.monotonic() - t0 <= PING_INTERVAL + LATE
            await conn.write_message("3")
        assert time.monotonic() - start > PING_INTERVAL + PING_TIMEOUT
        assert value["sid"] in h.app.sio.engine.sessions
        assert conn.close_code is None


async def test_websocket_ping_timeout_closes_session(tmp_path):
    async with raw_appliance(tmp_path, FAST) as (h, raw):
        start = time.monotonic()
        conn, value = await raw.open_ws()
        assert await recv(conn) == "2"
        assert await recv_closed(conn) == []
        elapsed = time.monotonic() - start
        deadline = PING_INTERVAL + PING_TIMEOUT
        assert deadline - EARLY <= elapsed <= deadline + LATE
        assert value["sid"] not in h.app.sio.engine.sessions


async def test_traffic_extends_the_pong_deadline_once(tmp_path):
    """As the reference server does: a packet other than the pong, while the pong is due,
    restarts the deadline once per ping (the pong may be queued behind that data); a client
    that keeps sending but never answers is still closed."""
    async with raw_appliance(tmp_path, FAST) as (h, raw):
        conn, value = await raw.open_ws()
        assert await recv(conn) == "2"
        pinged = time.monotonic()
        await asyncio.sleep(PING_TIMEOUT / 2)
        extended = time.monotonic()
        await conn.write_message("6")  # any packet but the pong

        async def chatter():  # more traffic must not extend it again
            with contextlib.suppress(WebSocketClosedError):
                while True:
                    await asyncio.sleep(0.03)
                    await conn.write_message("6")
        task = asyncio.ensure_future(chatter())
        try:
            assert await recv_closed(conn, timeout=2 * PING_TIMEOUT + LATE) == []
        finally:
            task.cancel()
        closed = time.monotonic()
        assert closed - extended >= PING_TIMEOUT - EARLY
        assert closed - pinged <= 2 * PING_TIMEOUT + LATE
        assert value["sid"] not in h.app.sio.engine.sessions


async def test_client_ping_is_a_protocol_error(tmp_path):
    """v4 heartbeats go server → client; a client ping closes the session (reference:
    "invalid heartbeat direction")."""
    async with raw_appliance(tmp_path) as (h, raw):
        conn, value = await raw.open_ws()
        await conn.write_message("2")
        assert await recv_closed(conn) == []
        sid = (await raw.open_polling())["sid"]
        await raw.send(sid, "2")
        assert sid not in h.app.sio.engine.sessions


# ============================================================================ polling
async def test_polling_message_round_trip(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        await raw.send(sid, connect_packet(token))
        [packet] = await raw.poll(sid)
        assert packet.startswith("40{")
        assert set(orjson.loads(packet[2:])) == {"sid"}
        # text is UTF-8 both ways
        install_echo(h)
        await raw.send(sid, f'421["{ECHO}","héllo ✓ 😀"]')
        [ack] = await raw.poll(sid)
        assert ack.startswith("431") and orjson.loads(ack[3:]) == ["héllo ✓ 😀"]


async def test_polling_waiting_get_is_answered_when_a_packet_arrives(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        waiting = asyncio.ensure_future(raw.poll(sid))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # a long poll: nothing to say yet
        await raw.send(sid, connect_packet(token))
        [packet] = await asyncio.wait_for(waiting, T)
        assert packet.startswith("40{")


async def test_polling_several_packets_in_one_payload(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        install_echo(h)
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        # client → server: three packets in one POST, handled in order
        await raw.send(sid, connect_packet(token), f'421["{ECHO}","a"]', f'422["{ECHO}","b"]')
        packets = await raw.poll_until(sid, 3)
        assert packets[0].startswith("40{")
        assert packets[1:] == ['431["a"]', '432["b"]']
        # server → client: packets queued while no GET waits come in one payload
        for n in range(3):
            status, _ = await h.api("POST", "/api/v1/emit", {
                "event": "events", "data": {"n": n}, "to": {"users": ["u1"]}})
            assert status == 202
        await asyncio.sleep(0.05)
        assert await raw.poll(sid) == [f'42["events",{{"n":{n}}}]' for n in range(3)]


async def test_polling_binary_is_base64(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        install_echo(h)
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        await raw.send(sid, connect_packet(token))
        [connected] = await raw.poll(sid)
        sio_sid = orjson.loads(connected[2:])["sid"]
        b64 = "b" + base64.b64encode(b"\x01\x02\x03\x04").decode()
        assert b64 == "bAQIDBA=="
        # client → server: a binary event whose attachment is a base64 packet
        await raw.send(sid, f'451-7["{ECHO}",{{"_placeholder":true,"num":0}}]', b64)
        assert await raw.poll_until(sid, 2) == ['461-7[{"_placeholder":true,"num":0}]', b64]
        # server → client: an Engine.IO binary message, and a Socket.IO binary event
        await h.app.sio.engine.send(sid, b"\x01\x02\x03\x04")
        await h.app.sio.emit("bin", b"\xff\x00", to=sio_sid)
        assert await raw.poll_until(sid, 3) == [
            b64, '451-["bin",{"_placeholder":true,"num":0}]', "b/wA="]


async def test_polling_duplicate_get_closes_session(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        sid = (await raw.open_polling())["sid"]
        first = asyncio.ensure_future(raw.get(f"EIO=4&transport=polling&sid={sid}"))
        await eventually(lambda: h.app.sio.engine.sessions[sid]._poll is not None)
        second = await raw.get(f"EIO=4&transport=polling&sid={sid}&t=burst")
        assert second.code == 400
        first = await asyncio.wait_for(first, T)
        assert first.code == 200
        assert first.body == b"1"  # the close packet ends the first one
        resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
        assert resp.code == 400 and error_body(resp)["code"] == 1


@pytest.mark.parametrize("body", ["abc", "", "7", "4ok\x1e", "bnot-base64!", b"\xff\xfe"])
async def test_polling_invalid_packet_closes_session(tmp_path, body):
    async with raw_appliance(tmp_path) as (h, raw):
        sid = (await raw.open_polling())["sid"]
        resp = await raw.post(f"EIO=4&transport=polling&sid={sid}", body)
        assert resp.code == 400
        resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
        assert resp.code == 400 and error_body(resp)["code"] == 1


async def test_polling_client_close_packet(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        sid = (await raw.open_polling())["sid"]
        waiting = asyncio.ensure_future(raw.get(f"EIO=4&transport=polling&sid={sid}"))
        await eventually(lambda: h.app.sio.engine.sessions[sid]._poll is not None)
        await raw.send(sid, "1")
        resp = await asyncio.wait_for(waiting, T)
        # the waiting GET is ended with a noop, as the reference server ends it
        assert resp.code == 200 and resp.body == b"6"
        resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
        assert resp.code == 400 and error_body(resp)["code"] == 1
        # packets after the close in the same payload are not processed
        sid = (await raw.open_polling())["sid"]
        await raw.send(sid, "1", "40")
        assert sid not in h.app.sio.engine.sessions


async def test_polling_aborted_get_closes_session(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        sid = (await raw.open_polling())["sid"]
        url = urlsplit(h.url)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(url.hostname, url.port), T)
        writer.write((f"GET {h.path}/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
                      f"Host: {url.netloc}\r\n\r\n").encode())
        await writer.drain()
        await eventually(lambda: h.app.sio.engine.sessions[sid]._poll is not None)
        writer.close()  # the client goes away while its GET waits
        await eventually(lambda: sid not in h.app.sio.engine.sessions)
        resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
        assert resp.code == 400 and error_body(resp)["code"] == 1


async def test_polling_post_larger_than_max_payload(tmp_path):
    async with raw_appliance(tmp_path, "[server]\nmax_message_bytes = 2048\n") as (h, raw):
        sid = (await raw.open_polling())["sid"]
        resp = await raw.post(f"EIO=4&transport=polling&sid={sid}", "4" + "x" * 2048)
        assert resp.code == 413
        resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
        assert resp.code == 400 and error_body(resp)["code"] == 1
        # exactly maxPayload bytes is fine
        sid = (await raw.open_polling())["sid"]
        body = '42["x","' + "y" * (2048 - 10) + '"]'
        assert len(body) == 2048
        resp = await raw.post(f"EIO=4&transport=polling&sid={sid}", body)
        assert resp.code == 200


# ============================================================================ upgrade
async def probe(raw: Raw, sid: str) -> WebSocketClientConnection:
    conn = await raw.ws(f"EIO=4&transport=websocket&sid={sid}")
    await conn.write_message("2probe")
    assert await recv(conn) == "3probe"
    return conn


async def test_upgrade(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        waiting = asyncio.ensure_future(raw.poll(sid))
        await eventually(lambda: h.app.sio.engine.sessions[sid]._poll is not None)
        conn = await probe(raw, sid)
        # the pending GET is released with a noop so the client can pause polling
        assert await asyncio.wait_for(waiting, T) == ["6"]
        # a GET during the upgrade is answered at once, with a noop
        assert await raw.poll(sid, timeout=1.0) == ["6"]
        await conn.write_message("5")
        await conn.write_message(connect_packet(token))
        # the first thing on the new transport is the answer: no stray noop
        reply = await recv(conn)
        assert isinstance(reply, str) and reply.startswith("40{"), reply
        assert h.app.sio.engine.sessions[sid].transport == "websocket"
        # the old transport is refused afterwards
        resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
        assert resp.code == 400
        resp = await raw.post(f"EIO=4&transport=polling&sid={sid}", "3")
        assert resp.code == 400
        # and the session lives on
        assert sid in h.app.sio.engine.sessions
        with pytest.raises(asyncio.TimeoutError):
            await recv(conn, timeout=0.2)


async def test_upgrade_nothing_stray_without_pending_get(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        install_echo(h)
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        conn = await probe(raw, sid)
        await conn.write_message("5")
        await conn.write_message(connect_packet(token))
        assert (await recv(conn)).startswith("40{")
        await conn.write_message(f'421["{ECHO}","x"]')
        assert await recv(conn) == '431["x"]'
        with pytest.raises(asyncio.TimeoutError):
            await recv(conn, timeout=0.2)


async def test_packets_during_upgrade_are_delivered_exactly_once(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        await raw.send(sid, connect_packet(token))
        assert (await raw.poll(sid))[0].startswith("40{")

        async def emit(n: int) -> None:
            status, _ = await h.api("POST", "/api/v1/emit", {
                "event": "events", "data": {"n": n}, "to": {"users": ["u1"]}})
            assert status == 202

        def numbers(packets) -> list[int]:
            return [orjson.loads(p[2:])[1]["n"] for p in packets if p.startswith("42")]

        waiting = asyncio.ensure_future(raw.poll(sid))
        await eventually(lambda: h.app.sio.engine.sessions[sid]._poll is not None)
        await emit(0)  # before the probe: on polling
        via_polling = await asyncio.wait_for(waiting, T)
        conn = await probe(raw, sid)
        await emit(1)  # probed, a GET still comes: it takes what is queued
        await asyncio.sleep(0.05)
        via_polling += await raw.poll(sid)
        await emit(2)  # probed, polling paused: queued for the websocket
        await emit(3)
        await asyncio.sleep(0.05)
        await conn.write_message("5")
        await emit(4)  # after the upgrade
        via_ws = []
        while len(numbers(via_ws)) < 3:
            via_ws.append(await recv(conn))
        assert numbers(via_polling) == [0, 1]
        assert numbers(via_ws) == [2, 3, 4]
        assert all(isinstance(m, str) and m.startswith("42") for m in via_ws), via_ws
        with pytest.raises(asyncio.TimeoutError):
            await recv(conn, timeout=0.2)


async def test_second_websocket_after_upgrade_is_closed(tmp_path):
    """Accepted, then closed at once without a status (the reference server's answer,
    compared side by side in test_engineio_reference.py)."""
    async with raw_appliance(tmp_path) as (h, raw):
        sid = (await raw.open_polling())["sid"]
        conn = await probe(raw, sid)
        await conn.write_message("5")
        await eventually(lambda: h.app.sio.engine.sessions[sid].transport == "websocket")
        second = await raw.ws(f"EIO=4&transport=websocket&sid={sid}")
        assert await recv_closed(second) == []
        assert second.close_code in (None, 1005)  # a close frame without a status
        # the upgraded websocket is unaffected
        assert sid in h.app.sio.engine.sessions and conn.close_code is None


async def test_second_probe_during_upgrade_is_closed(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        sid = (await raw.open_polling())["sid"]
        first = await probe(raw, sid)
        second = await raw.ws(f"EIO=4&transport=websocket&sid={sid}")
        assert await recv_closed(second) == []
        # the first probe still completes the upgrade
        await first.write_message("5")
        await eventually(lambda: h.app.sio.engine.sessions[sid].transport == "websocket")
        assert first.close_code is None


async def test_failed_probe_keeps_polling(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        conn = await raw.ws(f"EIO=4&transport=websocket&sid={sid}")
        await conn.write_message("4hello")  # not a probe: the websocket is dropped
        assert await recv_closed(conn) == []
        await raw.send(sid, connect_packet(token))
        assert (await raw.poll(sid))[0].startswith("40{")
        # a probe that the client abandons (closes) leaves polling working too
        conn = await probe(raw, sid)
        conn.close()
        await eventually(lambda: h.app.sio.engine.sessions[sid]._probe_ws is None)
        waiting = asyncio.ensure_future(raw.poll(sid))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # a real long poll again, not a noop loop
        await h.api("POST", "/api/v1/emit", {"event": "events", "data": 1, "to": {"users": ["u1"]}})
        assert await asyncio.wait_for(waiting, T) == ['42["events",1]']


async def test_probe_without_upgrade_times_out(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        engine = h.app.sio.engine
        engine.options = dataclasses.replace(engine.options, upgrade_timeout=0.3)
        sid = (await raw.open_polling())["sid"]
        conn = await probe(raw, sid)
        start = time.monotonic()
        assert await recv_closed(conn) == []  # never completed: the probe is dropped
        assert 0.3 - EARLY <= time.monotonic() - start <= 0.3 + LATE
        # the session stays on polling, and may try again
        assert engine.sessions[sid].transport == "polling"
        waiting = asyncio.ensure_future(raw.poll(sid))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        conn = await probe(raw, sid)
        assert await asyncio.wait_for(waiting, T) == ["6"]
        await conn.write_message("5")
        await eventually(lambda: engine.sessions[sid].transport == "websocket")


async def test_session_closed_during_acknowledged_probe(tmp_path):
    """The client paused polling after 3probe and will only speak again on the probe: the
    last packets and the close packet go there once it sends the upgrade packet."""
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        await raw.send(sid, connect_packet(token))
        assert (await raw.poll(sid))[0].startswith("40{")
        conn = await probe(raw, sid)
        await h.api("POST", "/api/v1/emit", {"event": "events", "data": 1, "to": {"users": ["u1"]}})
        await h.app.sio.engine.disconnect(sid)
        await conn.write_message("5")
        assert await recv_closed(conn) == ['42["events",1]', "1"]
        await eventually(lambda: sid not in h.app.sio.engine.sessions)


async def test_session_closed_during_probe_that_never_upgrades(tmp_path):
    """...and a probe whose client never sends the upgrade packet is not kept for ever."""
    async with raw_appliance(tmp_path) as (h, raw):
        engine = h.app.sio.engine
        engine.options = dataclasses.replace(engine.options, upgrade_timeout=0.3)
        for notify in (True, False):
            sid = (await raw.open_polling())["sid"]
            conn = await probe(raw, sid)
            engine.sessions[sid].close(notify_client=notify)
            assert await recv_closed(conn, timeout=0.3 + LATE) == []
            await eventually(lambda: sid not in engine.sessions, timeout=LATE)


async def test_upgrade_heartbeat_continues_on_websocket(tmp_path):
    async with raw_appliance(tmp_path, FAST) as (h, raw):
        sid = (await raw.open_polling())["sid"]
        conn = await probe(raw, sid)
        await conn.write_message("5")
        for _ in range(2):
            assert await recv(conn, timeout=PING_INTERVAL + LATE) == "2"
            await conn.write_message("3")
        assert sid in h.app.sio.engine.sessions


# ============================================================================ websocket
async def test_websocket_message_larger_than_max_payload(tmp_path):
    async with raw_appliance(tmp_path, "[server]\nmax_message_bytes = 2048\n") as (h, raw):
        conn, value = await raw.open_ws()
        await conn.write_message("4" + "x" * 2048)
        assert await recv_closed(conn) == []
        assert conn.close_code == 1009  # message too big
        await eventually(lambda: value["sid"] not in h.app.sio.engine.sessions)
        conn, value = await raw.open_ws()
        await conn.write_message(b"\x00" * 2049)
        assert await recv_closed(conn) == []
        await eventually(lambda: value["sid"] not in h.app.sio.engine.sessions)


@pytest.mark.parametrize("frame", ["abc", "", "7", "b!!"])
async def test_websocket_invalid_packet_closes_session(tmp_path, frame):
    async with raw_appliance(tmp_path) as (h, raw):
        conn, value = await raw.open_ws()
        await conn.write_message(frame)
        assert await recv_closed(conn) == []
        await eventually(lambda: value["sid"] not in h.app.sio.engine.sessions)


async def test_transport_mismatch_is_refused(tmp_path):
    """A websocket session cannot be polled, nor posted to."""
    async with raw_appliance(tmp_path) as (h, raw):
        conn, value = await raw.open_ws()
        sid = value["sid"]
        resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
        assert resp.code == 400 and error_body(resp)["code"] == 3
        resp = await raw.post(f"EIO=4&transport=polling&sid={sid}", "1")
        assert resp.code == 400 and error_body(resp)["code"] == 3
        # a second websocket is accepted and closed at once, as one after an upgrade
        second = await raw.ws(f"EIO=4&transport=websocket&sid={sid}")
        assert await recv_closed(second) == []
        # the websocket session itself is unaffected
        assert sid in h.app.sio.engine.sessions and conn.close_code is None


async def test_websocket_client_close_packet(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        conn, value = await raw.open_ws()
        await conn.write_message("1")
        assert await recv_closed(conn) == []
        await eventually(lambda: value["sid"] not in h.app.sio.engine.sessions)


async def test_websocket_client_going_away_closes_session(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        conn, value = await raw.open_ws()
        conn.close()
        await eventually(lambda: value["sid"] not in h.app.sio.engine.sessions)


async def test_websocket_binary_frames(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        install_echo(h)
        token = await h.user("u1", "Ann")
        conn, value = await raw.open_ws()
        await conn.write_message(connect_packet(token))
        sio_sid = orjson.loads((await recv(conn))[2:])["sid"]
        # binary goes as binary frames, never base64, in both directions
        await conn.write_message(f'451-9["{ECHO}",{{"_placeholder":true,"num":0}}]')
        await conn.write_message(b"\x01\x02\x03", binary=True)
        assert await recv(conn) == '461-9[{"_placeholder":true,"num":0}]'
        assert await recv(conn) == b"\x01\x02\x03"
        await h.app.sio.engine.send(value["sid"], b"\x04\x05")
        assert await recv(conn) == b"\x04\x05"
        await h.app.sio.emit("bin", {"a": b"\x06"}, to=sio_sid)
        assert await recv(conn) == '451-["bin",{"a":{"_placeholder":true,"num":0}}]'
        assert await recv(conn) == b"\x06"
