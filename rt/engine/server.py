"""The Engine.IO server that python-socketio drives.

python-socketio takes its engine through `AsyncServer._engineio_server_class`; this class
offers the same surface as `engineio.AsyncServer` that python-socketio uses (on, send,
send_packet, sessions, disconnect, background tasks, queues) while the transport itself is
ours (`session.py`, `handler.py`): exact handshake values, strict packet decoding, clean
upgrades, bounded outbound buffers, errors as the public specification words them.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engineio.base_server import BaseServer as _EioBase

from .protocol import MESSAGE, HandshakeError, Packet
from .session import EngineSession, consuming

log = logging.getLogger("rt.conn")


@dataclass(frozen=True)
class EngineOptions:
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    allow_websocket: bool = True
    # None = every origin; otherwise the allowed Origin header values
    cors_origins: tuple[str, ...] | None = None
    compression: bool = False
    upgrade_timeout: float = 10.0
    # a session whose unsent output (websocket buffer, or packets waiting for a poll) grows
    # past this is a slow consumer and is closed
    max_outbound_bytes: int = 16 * 1024 * 1024
    extra: dict = field(default_factory=dict)

    def origin_allowed(self, origin: str | None) -> bool:
        # requests without Origin come from non-browser clients; CORS does not apply
        return origin is None or self.cors_origins is None or origin in self.cors_origins


class EngineServer:
    """Engine.IO v4 sessions, addressed by python-socketio through this object."""

    reason = _EioBase.reason
    async_mode = "tornado"

    def __init__(self, engine_options: EngineOptions | None = None, **_socketio_kwargs: Any):
        # python-socketio passes its own engine kwargs (async_handlers, logger, json...);
        # our behaviour comes from EngineOptions only.
        self.options = engine_options or EngineOptions()
        self.handlers: dict[str, Callable] = {}
        self.sessions: dict[str, EngineSession] = {}
        self.counts = {"polling": 0, "websocket": 0}
        self.slow_consumers = 0  # sessions closed for unsent output past max_outbound_bytes
        self._tasks: set[asyncio.Task] = set()

    # ---------------------------------------------------------------- events
    def on(self, event: str, handler: Callable | None = None):
        def register(fn):
            self.handlers[event] = fn
            return fn
        return register(handler) if handler is not None else register

    async def fire_connect(self, session: EngineSession) -> bool:
        result = await self.handlers["connect"](session.sid, session.environ)
        return result is not False

    async def fire_disconnect(self, session: EngineSession, reason: str) -> None:
        try:
            await self.handlers["disconnect"](session.sid, reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: disconnect handler failed", session.sid)

    # ---------------------------------------------------------------- sessions
    @staticmethod
    def generate_id() -> str:
        return base64.urlsafe_b64encode(os.urandom(15)).decode("ascii")

    async def create_session(self, environ: dict, transport: str, ws=None) -> EngineSession:
        session = EngineSession(self, self.generate_id(), environ, transport)
        self.sessions[session.sid] = session
        self.counts[transport] += 1
        if ws is not None:
            session.attach_websocket(ws)
        # the open packet goes first, before anything the connect handler may send
        session.send(session.open_packet())
        if not await self.fire_connect(session):
            session.close(self.reason.SERVER_DISCONNECT)
            raise HandshakeError(HandshakeError.FORBIDDEN, status=403)
        session.start_heartbeat()
        return session

    async def open_websocket(self, ws, environ: dict, upgrade_sid: str | None
                             ) -> EngineSession | None:
        """A websocket is accepted: a new session on it, or the probe of an upgrade."""
        if upgrade_sid is None:
            try:
                return await self.create_session(environ, "websocket", ws=ws)
            except HandshakeError:
                ws.close_transport()
                return None
        session = self.sessions.get(upgrade_sid)
        if session is None or not session.can_upgrade():  # changed while accepting
            ws.close_transport()
            return None
        session.attach_websocket(ws)
        return session

    def cut_off(self, ws, unsent: int) -> None:
        """A websocket's unsent output passed max_outbound_bytes: the client is too slow."""
        session = ws.session
        log.warning("session %s: slow consumer (%d bytes unsent), closing",
                    session.sid if session is not None else "?", unsent)
        self.slow_consumers += 1
        # 1008 policy violation, with the reason a client's close event shows
        ws.close_transport(1008, "outbound buffer full")
        if session is not None:  # gone now: nothing more is written to it
            session.close(self.reason.TRANSPORT_ERROR, notify_client=False)

    def lookup(self, sid: str) -> EngineSession:
        session = self.sessions.get(sid)
        if session is None:
            raise HandshakeError(HandshakeError.UNKNOWN_SID)
        return session

    def forget(self, session: EngineSession) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
            self.counts[session.transport] -= 1
        session.cancel_linger()

    def on_upgrade(self, session: EngineSession) -> None:
        if self.sessions.get(session.sid) is not session:
            return  # already forgotten (closed mid-upgrade): it is counted nowhere
        self.counts["polling"] -= 1
        self.counts["websocket"] += 1

    def transport(self, sid: str) -> str:
        return self.lookup(sid).transport

    # ---------------------------------------------------------------- sending
    async def send(self, sid: str, data: str | bytes) -> None:
        await self.send_packet(sid, Packet(MESSAGE, data))

    async def send_packet(self, sid: str, pkt: Packet) -> None:
        session = self.sessions.get(sid)
        if session is not None:
            session.send(pkt)

    async def disconnect(self, sid: str | None = None) -> None:
        targets = [self.sessions.get(sid)] if sid is not None else list(self.sessions.values())
        for session in targets:
            if session is not None:
                session.close(self.reason.SERVER_DISCONNECT)

    def close_session(self, sid: str, reason: str) -> None:
        """Close for a protocol error found above Engine.IO (a malformed Socket.IO packet):
        like `disconnect`, with the reason the disconnect handlers get."""
        session = self.sessions.get(sid)
        current = consuming.get()
        if session is None and current is not None and current.sid == sid:
            session = current  # closed by the client meanwhile: still drop what follows
        if session is not None:
            session.close(reason, drop_pending=True)

    async def shutdown(self) -> None:
        await self.disconnect()

    # ---------------------------------------------------------------- python-socketio's
    async def get_session(self, sid: str) -> dict:
        return self.lookup(sid).session

    async def save_session(self, sid: str, session: dict) -> None:
        self.lookup(sid).session = session

    def session(self, sid: str):
        server = self

        class _Ctx:
            async def __aenter__(self):
                return await server.get_session(sid)

            async def __aexit__(self, *exc):
                return False

        return _Ctx()

    def start_background_task(self, target, *args, **kwargs) -> asyncio.Task:
        task = asyncio.ensure_future(target(*args, **kwargs))
        self._tasks.add(task)  # keep a reference: the loop only holds weak ones
        task.add_done_callback(self._tasks.discard)
        return task

    async def sleep(self, seconds: float = 0) -> None:
        await asyncio.sleep(seconds)

    def create_queue(self, *args, **kwargs) -> asyncio.Queue:
        return asyncio.Queue(*args, **kwargs)

    def get_queue_empty_exception(self):
        return asyncio.QueueEmpty

    def create_event(self, *args, **kwargs) -> asyncio.Event:
        return asyncio.Event(*args, **kwargs)
