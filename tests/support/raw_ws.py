"""A websocket client at the frame level, for what a library client would never send.

It reads only when told to (with a small receive buffer, so the server's own buffering is
exercised), and writes any frame: fragmented, unmasked, with reserved bits, oversized.
"""
from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

import orjson

from tests.support.appliance import WAIT

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


class Closed(ConnectionError):
    """The server's close frame: its code and reason."""

    def __init__(self, code: int | None, reason: str):
        super().__init__(f"closed {code} {reason!r}")
        self.code, self.reason = code, reason


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def handshake(cls, port: int, path: str, query: str = "EIO=4&transport=websocket",
                        rcvbuf: int | None = 4096) -> RawWebSocket:
        """The HTTP upgrade only; the Engine.IO open packet is the first frame to read."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET {path}/?{query} HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    @classmethod
    async def open(cls, port: int, path: str, token: str, **kw) -> RawWebSocket:
        """Handshake, Engine.IO open, Socket.IO connect with the token."""
        ws = await cls.handshake(port, path, **kw)
        assert (await ws.recv())[:1] == "0"  # Engine.IO open
        ws.send("40" + orjson.dumps({"token": token}).decode())
        assert (await ws.recv()).startswith("40")  # Socket.IO connect accepted
        return ws

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, masked: bool = True,
                   rsv: int = 0, declared: int | None = None) -> None:
        size = len(payload) if declared is None else declared
        b0 = (0x80 if fin else 0) | rsv | opcode
        mask_bit = 0x80 if masked else 0
        if size < 126:
            head = struct.pack("!BB", b0, mask_bit | size)
        elif size <= 0xFFFF:
            head = struct.pack("!BBH", b0, mask_bit | 126, size)
        else:
            head = struct.pack("!BBQ", b0, mask_bit | 127, size)
        if masked:
            mask = os.urandom(4)
            payload = mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + payload)

    def send(self, text: str) -> None:
        self.send_frame(TEXT, text.encode())

    async def frame(self) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), WAIT)
        opcode, size = head[0] & 0x0F, head[1] & 0x7F
        assert not head[1] & 0x80, "server frames are never masked"
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return opcode, await asyncio.wait_for(self.reader.readexactly(size), WAIT)

    async def recv(self) -> str | bytes:
        """The next message; answers Engine.IO pings; raises Closed on a close frame."""
        while True:
            opcode, data = await self.frame()
            if opcode == CLOSE:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                raise Closed(code, data[2:].decode())
            if opcode == BINARY:
                return data
            text = data.decode()
            if text == "2":
                self.send("3")
                continue
            return text

    async def closed_with(self) -> int | None:
        """Read until the server's close frame; its code."""
        while True:
            try:
                await self.recv()
            except Closed as exc:
                return exc.code

    async def eof(self) -> bool:
        """Whether the server closed the TCP connection (within the wait)."""
        try:
            return await asyncio.wait_for(self.reader.read(), WAIT) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.transport.abort()
