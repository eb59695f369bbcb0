"""A short Socket.IO session with open-webui's own socket server, as a tab would open it.

open-webui has no HTTP endpoint for some side effects of socket events: a chat's or a
channel's read marker (`events:chat` / `events:channel` `last_read_at`) is written by its
socket handlers only. The least coupled way to cause them with an unmodified open-webui is
to do what a browser does: connect to its `/ws/socket.io` with the user's own token, send
the event, and leave. No database of open-webui is touched, no key of ours is needed, and
open-webui's answers (`chat:list` to `user:{id}`) reach our browsers through the shared
Redis like any of its emits.

Every event is sent with an ack id: python-socketio acknowledges after the handler has run,
so the session is not closed under a handler still working.
"""
from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import tornado.websocket


class SocketPortError(Exception):
    pass


def socket_url(base_url: str, path: str = "/ws/socket.io/") -> str:
    parts = urlsplit(base_url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + path, "EIO=4&transport=websocket", ""))


class OpenWebuiSocket:
    def __init__(self, base_url: str, timeout: float):
        self.url = socket_url(base_url)
        self.timeout = timeout
        self.sessions = 0  # opened, for metrics and tests

    async def send(self, token: str, events: list[tuple[str, Any]]) -> list[Any]:
        """Connect as the token's user, send each event and wait for its ack; the acks'
        first arguments in order."""
        return await asyncio.wait_for(self._send(token, events), self.timeout)

    async def _send(self, token: str, events: list[tuple[str, Any]]) -> list[Any]:
        self.sessions += 1
        conn = await tornado.websocket.websocket_connect(self.url, max_message_size=1 << 20)
        try:
            opened = await self._read(conn)
            if not opened.startswith("0"):
                raise SocketPortError(f"unexpected engine.io open packet {opened[:40]!r}")
            await conn.write_message("40" + orjson.dumps({"token": token}).decode())
            while True:
                reply = await self._read(conn)
                if reply.startswith("40"):
                    break
                if reply.startswith("44"):
                    raise SocketPortError(f"open-webui refused the connection: {reply[2:200]}")
            answers = []
            for ack_id, (event, data) in enumerate(events, 1):
                await conn.write_message(f"42{ack_id}" + orjson.dumps([event, data]).decode())
                answers.append(await self._ack(conn, ack_id))
            return answers
        finally:
            conn.close()

    async def _read(self, conn) -> str:
        while True:
            msg = await conn.read_message()
            if msg is None:
                raise SocketPortError("open-webui closed the socket")
            if isinstance(msg, bytes):
                continue
            if msg == "2":  # engine.io ping: answer, keep reading
                await conn.write_message("3")
                continue
            return msg

    async def _ack(self, conn, ack_id: int) -> Any:
        prefix = f"43{ack_id}"
        while True:
            msg = await self._read(conn)
            if msg.startswith(prefix) and not msg[len(prefix):len(prefix) + 1].isdigit():
                args = orjson.loads(msg[len(prefix):] or b"[]")
                return args[0] if args else None
