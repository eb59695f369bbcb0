"""The Engine.IO server that python-socketio drives.

python-socketio takes its engine through `AsyncServer._engineio_server_class`; this class
offers the same surface as `engineio.AsyncServer` that python-socketio uses (on, send,
send_packet, sessions, disconnect, background tasks, queues) while the transport itself is
ours (`session.py`, `handler.py`): exact handshake values, strict packet decoding, clean
upgrades, bounded outbound buffers, paced inbound reading, errors as the public
specification words them.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TypeVar

from engineio.base_server import BaseServer as _EioBase

from rt.core.tasks import TaskGroup
from rt.core.tokens import token_urlsafe

from .contracts import EngineStats, MessageHandler, SessionRef, Siblings, WsTransport
from .inbox import Consumer, consuming
from .options import EngineOptions
from .protocol import MESSAGE, HandshakeError, Packet
from .session import WS_INVALID_PACKET, EngineSession

__all__ = ["EngineOptions", "EngineServer"]

log = logging.getLogger("rt.conn")

_H = TypeVar("_H", bound=MessageHandler)


class EngineServer:
    """Engine.IO v4 sessions, addressed by python-socketio through this object."""

    reason = _EioBase.reason
    async_mode = "tornado"

    def __init__(self, engine_options: EngineOptions | None = None, **_socketio_kwargs: Any):
        # python-socketio passes its own engine kwargs (async_handlers, logger, json...);
        # our behaviour comes from EngineOptions only.
        self.options = engine_options or EngineOptions()
        self.handlers: dict[str, MessageHandler] = {}
        self.sessions: dict[str, EngineSession] = {}
        self.counts = {"polling": 0, "websocket": 0}
        self.counters = EngineStats()
        # python-socketio's background tasks (its client manager's listener): kept
        # referenced, failures logged, by the project's one task helper
        self.tasks = TaskGroup()
        # with workers: "<index>." before every sid, so that any worker can tell whose a
        # session is ('.' is not in the base64url alphabet), and the other workers
        self.sid_prefix = ""
        self.siblings: Siblings | None = None

    @property
    def slow_consumers(self) -> int:
        """Sessions closed for unsent output past max_outbound_bytes."""
        return self.counters.slow_consumers

    def stats(self) -> dict[str, int]:
        """Counters since start (EngineStats) and, as `sessions_held`, how many sessions
        have their reading stopped right now."""
        held = sum(1 for session in self.sessions.values() if session.held)
        return {**asdict(self.counters), "sessions_held": held}

    # ---------------------------------------------------------------- events
    def on(self, event: str, handler: _H | None = None) -> Any:
        def register(fn: _H) -> _H:
            self.handlers[event] = fn
            return fn
        return register(handler) if handler is not None else register

    @property
    def message_handler(self) -> Callable[[str, str | bytes], Awaitable[None]]:
        # the handler itself, called by the inbox for every message: no call around it
        return self.handlers["message"]

    async def fire_connect(self, session: EngineSession) -> bool:
        result = await self.handlers["connect"](session.sid, session.environ)
        return result is not False

    async def fire_disconnect(self, sid: str, reason: str) -> None:
        try:
            await self.handlers["disconnect"](sid, reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: disconnect handler failed", sid)

    # ---------------------------------------------------------------- sessions
    def generate_id(self) -> str:
        return self.sid_prefix + token_urlsafe(15)

    async def create_session(self, environ: dict[str, Any], transport: str,
                             ws: WsTransport | None = None) -> EngineSession:
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

    async def open_websocket(self, ws: WsTransport, environ: dict[str, Any],
                             upgrade_sid: str | None) -> EngineSession | None:
        """A websocket is accepted: a new session on it, or the probe of an upgrade. A
        websocket for a session that cannot take one (upgraded already, or probing with
        another) is closed right after its handshake, as the reference server does."""
        if upgrade_sid is None:
            try:
                return await self.create_session(environ, "websocket", ws=ws)
            except HandshakeError:
                ws.close_transport()
                return None
        session = self.sessions.get(upgrade_sid)
        if session is None or not session.can_upgrade():
            ws.close_transport()
            return None
        session.attach_websocket(ws)
        return session

    def lookup(self, sid: str) -> EngineSession:
        session = self.sessions.get(sid)
        if session is None:
            raise HandshakeError(HandshakeError.UNKNOWN_SID)
        return session

    def forget(self, session: SessionRef) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
            self.counts[session.transport] -= 1
        session.cancel_linger()

    def on_upgrade(self, session: SessionRef) -> None:
        if self.sessions.get(session.sid) is not session:
            return  # already forgotten (closed mid-upgrade): it is counted nowhere
        self.counts["polling"] -= 1
        self.counts["websocket"] += 1

    def transport(self, sid: str) -> str:
        return self.lookup(sid).transport

    # ---------------------------------------------------------------- sending
    async def send(self, sid: str, data: str | bytes) -> None:
        await self.send_packet(sid, Packet(MESSAGE, data))

    def send_text(self, sid: str, text: bytes) -> None:
        """A MESSAGE packet whose text is `text` (UTF-8); never waits."""
        session = self.sessions.get(sid)
        if session is not None:
            session.send_message_text(text)

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
        session: EngineSession | Consumer | None = self.sessions.get(sid)
        current = consuming.get()
        if session is None and current is not None and current.sid == sid:
            session = current  # closed by the client meanwhile: still drop what follows
        if session is not None:
            if not session.closed:
                self.counters.protocol_errors += 1
            # the client's close event says why: 1002 "invalid packet"
            session.close(reason, drop_pending=True, ws_close=WS_INVALID_PACKET)

    async def shutdown(self) -> None:
        await self.disconnect()

    # ---------------------------------------------------------------- python-socketio's
    async def get_session(self, sid: str) -> dict[str, Any]:
        return self.lookup(sid).session

    async def save_session(self, sid: str, session: dict[str, Any]) -> None:
        self.lookup(sid).session = session

    @asynccontextmanager
    async def session(self, sid: str) -> AsyncIterator[dict[str, Any]]:
        yield await self.get_session(sid)

    def start_background_task(self, target: Callable[..., Coroutine[Any, Any, Any]],
                              *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
        name = getattr(target, "__qualname__", "engine background task")
        return self.tasks.spawn(name, target(*args, **kwargs))

    async def sleep(self, seconds: float = 0) -> None:
        await asyncio.sleep(seconds)

    def create_queue(self, *args: Any, **kwargs: Any) -> asyncio.Queue[Any]:
        return asyncio.Queue(*args, **kwargs)

    def get_queue_empty_exception(self) -> type[Exception]:
        return asyncio.QueueEmpty

    def create_event(self, *args: Any, **kwargs: Any) -> asyncio.Event:
        return asyncio.Event(*args, **kwargs)
