"""The interfaces between the engine's parts, so that each module imports only those below it:
a session knows its server and its websocket only through these (server.py and
websocket.py / handler.py implement them)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .options import EngineOptions
from .protocol import Frame, Packet

MessageHandler = Callable[..., Awaitable[Any]]


@dataclass
class EngineStats:
    """Counters since start, read by the app's /metrics (EngineServer.stats())."""

    # messages handed to the message handler (Socket.IO packets and attachments)
    messages_in: int = 0
    # sessions closed because their unsent output passed max_outbound_bytes
    slow_consumers: int = 0
    # sessions closed for input that is not Engine.IO / Socket.IO / RFC 6455
    protocol_errors: int = 0
    # sessions closed for staying at their inbound budget (flood_close_after)
    flood_disconnects: int = 0
    # times a session's reading was stopped: its inbound rate budget ran out ...
    inbound_throttled: int = 0
    # ... or the messages it sent were not handled yet (the handlers are behind)
    inbound_backlogged: int = 0


class Siblings(Protocol):
    """The other workers of the box ([server] workers), as the engine's handler reaches
    them: a session lives in the worker that opened it, and a request for it that reaches
    another worker is passed on (rt.workers.routing implements this)."""

    def elsewhere(self, sid: str) -> bool:
        """The session `sid` belongs to another worker."""

    async def forward(self, request: Any, closed: Awaitable[None]
                      ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send a polling request to the session's worker; its answer (status, headers,
        body). `closed` resolves when the client goes away: the request is withdrawn, so
        its worker knows the long-poll is gone."""

    def hand_off(self, sid: str, sock: Any, key: str, environ: dict[str, Any]) -> None:
        """Give the socket of a websocket upgrading `sid` (handshake not yet answered) to
        the session's worker; this worker keeps nothing of it."""


class SessionRef(Protocol):
    """A session as its server files it."""

    sid: str
    transport: str

    def cancel_linger(self) -> None: ...


class SessionHost(Protocol):
    """What a session needs from its server (server.EngineServer)."""

    options: EngineOptions
    counters: EngineStats

    @property
    def message_handler(self) -> Callable[[str, str | bytes], Awaitable[None]]:
        """What handles a session's message (a consumer asks once per run)."""
        ...

    async def fire_disconnect(self, sid: str, reason: str) -> None: ...

    def forget(self, session: SessionRef) -> None: ...

    def on_upgrade(self, session: SessionRef) -> None: ...


class WsTransport(Protocol):
    """A websocket as a session uses it: ours (websocket.WebSocket) or Tornado's, with
    per-message compression (handler.EngineIOHandler)."""

    probed: bool  # the upgrade probe was answered on it

    def send_wire_frame(self, frame: Frame, message: Packet | str | bytes) -> None: ...

    def send_frame(self, data: str | bytes | bytearray) -> None: ...

    def send_message_text(self, text: bytes) -> None:
        """A MESSAGE packet whose text is `text`, UTF-8 (python-socketio's packets)."""
        ...

    def close_transport(self, code: int | None = None, reason: str | None = None,
                        now: bool = False) -> None: ...

    def cork(self) -> bool:
        """Hold writes until `uncork` (then written at once); False if that is not done
        (corked already, closed, or a transport that does not)."""
        ...

    def uncork(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def has_unread(self) -> bool:
        """Whether the client has sent more than what was handed to the session so far."""
        ...


class WsListener(Protocol):
    """The session a websocket reports to."""

    sid: str

    def on_ws_message(self, ws: WsTransport, message: str | bytes) -> None: ...

    def on_ws_control(self, ws: WsTransport, size: int) -> None: ...

    def on_ws_overflow(self, ws: WsTransport, unsent: int) -> None: ...

    def on_ws_closed(self, ws: WsTransport) -> None: ...
