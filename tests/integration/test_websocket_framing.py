"""RFC 6455 framing of our websocket transport (rt/engine/websocket.py), from raw frames:
what browsers and libraries send (fragments, pings, close handshakes) works, and what
breaks the protocol is refused with the close code the RFC names, changing nothing."""
import asyncio

import orjson
import pytest

from tests.support.appliance import running
from tests.support.raw_ws import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, RawWebSocket

pytestmark = pytest.mark.asyncio


async def connected(h, user: str = "a") -> RawWebSocket:
    return await RawWebSocket.open(h.app.port, h.path, await h.user(user), rcvbuf=None)


async def heartbeat_ack(ws: RawWebSocket, ack_id: int) -> None:
    """An acked event proves the connection still reads and answers."""
    ws.send(f'42{ack_id}["heartbeat",{{}}]')
    assert await ws.recv() == f"43{ack_id}[]"


async def test_fragmented_text_message_is_reassembled(tmp_path):
    async with running(tmp_path) as h:
        ws = await connected(h)
        message = '421["heartbeat",{"pad":"' + "é" * 200 + '"}]'
        raw = message.encode()
        # split inside a multi-byte character: UTF-8 is checked on the whole message
        ws.send_frame(TEXT, raw[:101], fin=False)
        ws.send_frame(PING, b"in between")  # control frames may come between fragments
        ws.send_frame(CONTINUATION, raw[101:300], fin=False)
        ws.send_frame(CONTINUATION, raw[300:])
        opcode, data = await ws.frame()
        assert (opcode, data) == (PONG, b"in between")
        assert await ws.recv() == "431[]"
        ws.close()


async def test_ping_is_answered_with_its_payload(tmp_path):
    async with running(tmp_path) as h:
        ws = await connected(h)
        ws.send_frame(PING, b"\x00\x01abc")
        assert await ws.frame() == (PONG, b"\x00\x01abc")
        ws.send_frame(PONG, b"unsolicited")  # ignored, as the RFC allows
        await heartbeat_ack(ws, 5)
        ws.close()


async def test_binary_message_reaches_socketio_as_attachment(tmp_path):
    async with running(tmp_path) as h:
        ws = await connected(h)
        ws.send('451-2["heartbeat",{"blob":{"_placeholder":true,"num":0}}]')
        ws.send_frame(BINARY, b"\x00\xffbytes")
        assert await ws.recv() == "432[]"
        ws.close()


async def test_client_close_is_answered_and_ends_the_session(tmp_path):
    async with running(tmp_path) as h:
        ws = await connected(h)
        assert len(h.app.gateway.identities) == 1
        ws.send_frame(CLOSE, (1001).to_bytes(2, "big") + b"tab closed")
        assert await ws.frame() == (CLOSE, (1001).to_bytes(2, "big"))
        assert await ws.eof()
        for _ in range(200):
            if not h.app.gateway.identities:
                break
            await asyncio.sleep(0.01)
        assert not h.app.gateway.identities and not h.app.sio.engine.sessions
        ws.close()


@pytest.mark.parametrize("frame, code", [
    (dict(opcode=TEXT, payload=b"4", masked=False), 1002),           # clients must mask
    (dict(opcode=TEXT, payload=b"4", rsv=0x40), 1002),               # no extension agreed
    (dict(opcode=0x3, payload=b""), 1002),                           # reserved opcode
    (dict(opcode=PING, payload=b"x" * 126), 1002),                   # control frame > 125
    (dict(opcode=PING, payload=b"x", fin=False), 1002),              # fragmented control
    (dict(opcode=CONTINUATION, payload=b"x"), 1002),                 # nothing to continue
    (dict(opcode=TEXT, payload=b'42["heartbeat",{"a":"\xff"}]'), 1007),  # not UTF-8
    (dict(opcode=CLOSE, payload=b"\x03"), 1002),                     # 1-byte close payload
    (dict(opcode=CLOSE, payload=(999).to_bytes(2, "big")), 1002),    # invalid close code
])
async def test_protocol_violations_close_with_the_rfc_code(tmp_path, frame, code):
    async with running(tmp_path) as h:
        ws = await connected(h)
        other = await connected(h, "b")
        ws.send_frame(**frame)
        assert await ws.closed_with() == code
        assert await ws.eof()
        await heartbeat_ack(other, 1)  # the others are untouched
        other.close()
        ws.close()


async def test_new_message_inside_a_fragmented_one_is_refused(tmp_path):
    async with running(tmp_path) as h:
        ws = await connected(h)
        ws.send_frame(TEXT, b'42["heart', fin=False)
        ws.send_frame(TEXT, b'42["heartbeat",{}]')
        assert await ws.closed_with() == 1002
        ws.close()


async def test_message_over_max_payload_is_refused_before_its_bytes_arrive(tmp_path):
    async with running(tmp_path, "[server]\nmax_message_bytes = 2048\n") as h:
        ws = await connected(h)
        # only the header, declaring 1 MB: refused at once, nothing is buffered for it
        ws.send_frame(TEXT, b"", declared=1_000_000)
        assert await ws.closed_with() == 1009
        ws.close()
        ws = await connected(h)
        # fragments that add up past the limit are refused the same way
        ws.send_frame(TEXT, b"4" * 1500, fin=False)
        ws.send_frame(CONTINUATION, b"2" * 1500)
        assert await ws.closed_with() == 1009
        ws.close()
        ws = await connected(h)
        await heartbeat_ack(ws, 3)  # a message within the limit is fine
        ws.close()


async def test_server_close_waits_for_the_clients_answer(tmp_path):
    async with running(tmp_path) as h:
        ws = await connected(h)
        ws.send("9")  # not an Engine.IO packet: the server closes the session
        opcode, _ = await ws.frame()
        assert opcode == CLOSE
        # the connection stays open for the client's answer (a clean close on both ends)
        ws.send_frame(PING, b"still there?")
        await asyncio.sleep(0.2)
        assert not ws.reader.at_eof()
        ws.send_frame(CLOSE, (1000).to_bytes(2, "big"))
        assert await ws.eof()
        ws.close()


async def test_handshake_errors(tmp_path):
    async with running(tmp_path) as h:
        path = f"{h.path}/?EIO=4&transport=websocket"
        base = {"Upgrade": "websocket", "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
        for drop, status in (("Sec-WebSocket-Key", 400), ("Connection", 400)):
            headers = {k: v for k, v in base.items() if k != drop}
            resp = await h.http.fetch(h.url + path, headers=headers, raise_error=False)
            assert resp.code == status, (drop, resp.code)
        resp = await h.http.fetch(h.url + path, headers={**base, "Sec-WebSocket-Version": "8"},
                                  raise_error=False)
        assert resp.code == 426 and resp.headers["Sec-WebSocket-Version"] == "13"
        assert not h.app.sio.engine.sessions  # none of them opened a session
        # and the accept value is the RFC's (its own example key)
        reader, writer = await asyncio.open_connection("127.0.0.1", h.app.port)
        writer.write((f"GET {path} HTTP/1.1\r\nHost: x\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in base.items()) + "\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        writer.transport.abort()


async def test_open_packet_values(tmp_path):
    async with running(tmp_path, "[server]\nping_interval = 2.5\n") as h:
        ws = await RawWebSocket.handshake(h.app.port, h.path, rcvbuf=None)
        open_packet = await ws.recv()
        assert open_packet[0] == "0"
        assert orjson.loads(open_packet[1:])["pingInterval"] == 2500
        ws.close()
