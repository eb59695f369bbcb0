"""Outbound backpressure (issues 7 and 8): a client that reads slowly gets every message in
order; one that stops reading is cut off at `max_outbound_bytes`, counted, and costs the
others nothing.

The slow clients are raw websockets with a small receive buffer, so the kernel's buffers
fill and the server's own buffering (partial writes, then the IOStream) is exercised.
"""
import asyncio
import base64
import os
import socket
import struct

import orjson
import pytest

from tests.support.appliance import WAIT, running

pytestmark = pytest.mark.asyncio


class RawWebSocket:
    """A minimal Engine.IO websocket client that reads only when told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, path: str, token: str) -> "RawWebSocket":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path}/?EIO=4&transport=websocket HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101"), head
        ws = cls(reader, writer)
        assert (await ws.recv())[:1] == "0"  # Engine.IO open
        ws.send("40" + orjson.dumps({"token": token}).decode())
        assert (await ws.recv()).startswith("40")  # Socket.IO connect accepted
        return ws

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) <= 0xFFFF
        head = (struct.pack("!BB", 0x81, 0x80 | len(payload)) if len(payload) < 126
                else struct.pack("!BBH", 0x81, 0x80 | 126, len(payload)))
        self.writer.write(head + mask + masked)

    async def frame(self) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), WAIT)
        opcode, size = head[0] & 0x0F, head[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return opcode, await asyncio.wait_for(self.reader.readexactly(size), WAIT)

    async def recv(self) -> str:
        """The next text message; answers pings so the session stays alive."""
        while True:
            opcode, data = await self.frame()
            if opcode == 0x8:
                raise ConnectionError(f"closed {data[:2].hex()} {data[2:]!r}")
            text = data.decode()
            if text == "2":
                self.send("3")
                continue
            return text

    def close(self) -> None:
        self.writer.close()
        self.writer.transport.abort()


def event_of(message: str) -> list:
    assert message.startswith("42"), message[:40]
    return orjson.loads(message[2:])


async def eventually(predicate, timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_slow_reader_gets_every_message_in_order(tmp_path):
    async with running(tmp_path, "[limits]\nmax_outbound_bytes = 67108864\n") as h:
        tok = await h.user("slow")
        ws = await RawWebSocket.open(h.app.port, h.path, tok)
        filler = "x" * 20_000
        count = 400  # 8 MB: well past what the kernel buffers hold for this socket
        for i in range(count):
            await h.app.emitter.emit("bulk", {"i": i, "filler": filler}, users=["slow"])
        engine = h.app.sio.engine
        session = next(iter(engine.sessions.values()))
        # the kernel took only part: the rest waits in the server's buffer, not lost
        assert session.ws.unsent() > 0
        got = []
        while len(got) < count:
            name, data = event_of(await ws.recv())
            assert name == "bulk"
            got.append(data["i"])
            if len(got) % 50 == 0:
                await asyncio.sleep(0.01)  # a reader slower than the writer
        assert got == list(range(count))
        assert engine.slow_consumers == 0
        ws.close()


async def test_stalled_reader_is_cut_off_and_others_unaffected(tmp_path):
    async with running(tmp_path, "[limits]\nmax_outbound_bytes = 65536\n") as h:
        tok = await h.user("stuck")
        ws = await RawWebSocket.open(h.app.port, h.path, tok)  # then never reads again
        fine = await h.connect(tok)  # same user, a normal client that keeps reading
        received = []
        fine.on("bulk", lambda data: received.append(data["i"]))
        filler = "y" * 50_000
        count = 300  # 15 MB: past the kernel buffers and the 64 KiB allowance
        engine = h.app.sio.engine

        async def send(i: int) -> None:
            await h.app.emitter.emit("bulk", {"i": i, "filler": filler}, users=["stuck"])
            # paced by the reading client, which thus never has much unsent
            await eventually(lambda: len(received) == i + 1)

        sent = 0
        while engine.slow_consumers == 0:
            assert sent < count, "the stalled client was never cut off"
            await send(sent)
            sent += 1
        await eventually(lambda: len(h.app.gateway.identities) == 1)  # its disconnect ran
        # what it reads now (what the kernel held, then the rest of the server's buffer)
        # ends with the close frame that says why: 1008 (0x03f0) and the reason
        before_close = []
        with pytest.raises(ConnectionError) as closed:
            while True:
                before_close.append(event_of(await ws.recv())[1]["i"])
        assert "03f0" in str(closed.value) and "outbound buffer full" in str(closed.value)
        assert before_close == list(range(len(before_close)))  # a prefix, in order
        assert 0 < len(before_close) <= sent
        for i in range(sent, count):  # the others go on as before
            await send(i)
        assert received == list(range(count))
        assert engine.slow_consumers == 1
        status, _ = await h.api("GET", "/healthz", key=None)
        assert status == 200
        resp = await h.http.fetch(h.url + "/metrics", raise_error=False)
        assert b'rt_limited_total{limit="outbound_bytes"} 1.0' in resp.body
        ws.close()


async def test_polling_client_that_stops_collecting_is_cut_off(tmp_path):
    async with running(tmp_path, "[limits]\nmax_outbound_bytes = 65536\n") as h:
        tok = await h.user("poller")
        base = f"{h.url}{h.path}/?EIO=4&transport=polling"
        resp = await h.http.fetch(base)
        sid = orjson.loads(resp.body[1:])["sid"]
        resp = await h.http.fetch(f"{base}&sid={sid}", method="POST",
                                  body="40" + orjson.dumps({"token": tok}).decode())
        assert resp.body == b"ok"
        await eventually(lambda: len(h.app.gateway.identities) == 1)
        engine = h.app.sio.engine
        filler = "z" * 10_000
        for i in range(5):  # 50 KB waiting for a poll: within the allowance
            await h.app.emitter.emit("bulk", {"i": i, "filler": filler}, users=["poller"])
        assert engine.slow_consumers == 0 and sid in engine.sessions
        for i in range(5, 20):  # 200 KB for a client that never collects it
            await h.app.emitter.emit("bulk", {"i": i, "filler": filler}, users=["poller"])
        assert engine.slow_consumers == 1 and sid not in engine.sessions
        await eventually(lambda: not h.app.gateway.identities)  # its disconnect ran
        resp = await h.http.fetch(f"{base}&sid={sid}", raise_error=False)
        assert resp.code == 400 and orjson.loads(resp.body)["message"] == "Session ID unknown"


async def test_polling_queue_allowance_is_freed_by_polls(tmp_path):
    async with running(tmp_path, "[limits]\nmax_outbound_bytes = 65536\n") as h:
        tok = await h.user("poller")
        client = await h.connect(tok, transports=("polling",))
        received = []
        client.on("bulk", lambda data: received.append(data["i"]))
        filler = "w" * 10_000
        for i in range(30):  # 300 KB in all, but collected as it comes
            await h.app.emitter.emit("bulk", {"i": i, "filler": filler}, users=["poller"])
            await eventually(lambda: len(received) == i + 1)
        assert received == list(range(30))
        assert h.app.sio.engine.slow_consumers == 0
