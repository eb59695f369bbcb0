"""Tornado request handler for the Engine.IO path: handshake, polling and websocket.

Every refusal happens before Tornado accepts a websocket, as an HTTP error with the
standard JSON body, so no client is ever left holding an open, dead socket.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import orjson
import tornado.httputil
import tornado.web
import tornado.websocket

from .protocol import Frame, HandshakeError, Packet, wire
from .server import EngineServer
from .session import EngineSession
from .websocket import WebSocket, handshake_response, valid_key

log = logging.getLogger("rt.conn")

_POLL_CONTENT_TYPE = "text/plain; charset=UTF-8"


# The request headers a session keeps: its connect handler may want to know where the
# client came from and what it is. The rest (cookies with tokens in them, above all) would
# be kilobytes held for the whole life of every connection, for nobody.
_KEPT_HEADERS = ("Origin", "User-Agent")


def keep_headers(environ: dict[str, Any], header: Callable[[str], str | None]) -> None:
    """The _KEPT_HEADERS `header(name)` finds, into `environ` as WSGI names them."""
    for name in _KEPT_HEADERS:
        value = header(name)
        if value is not None:
            environ["HTTP_" + name.upper().replace("-", "_")] = value


def build_environ(request: tornado.httputil.HTTPServerRequest, transport: str
                  ) -> dict[str, Any]:
    """The WSGI-like environ python-socketio hands to connect handlers."""
    environ = {
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query or "",
        # remote_ip honours X-Forwarded-For / X-Real-IP only when the HTTP server
        # was built with xheaders (trust_proxy_headers)
        "REMOTE_ADDR": request.remote_ip,
        "rt.transport": transport,
    }
    keep_headers(environ, request.headers.get)
    return environ


class EngineIOHandler(tornado.websocket.WebSocketHandler):
    """Routed at the Socket.IO path; `engine` comes from the route's kwargs."""

    def initialize(self, engine: EngineServer) -> None:
        self.engine = engine
        self.session: EngineSession | None = None  # the session of this websocket
        self._polling: EngineSession | None = None  # the session whose long-poll this is
        self._upgrade_sid: str | None = None
        self._upgrade_elsewhere = False  # that session lives in another worker
        self.probed = False  # websocket probe seen (upgrade in progress)
        self._pending_bytes = 0
        self._closing = False
        self._reading: asyncio.Future[None] | None = None  # set while reading is held
        self._gone: asyncio.Future[None] | None = None  # a forwarded request's client left

    # ------------------------------------------------------------ common checks
    def _query(self) -> tuple[str | None, str | None]:
        args = self.request.query_arguments
        if args.get("EIO", [b""])[0] != b"4":
            raise HandshakeError(HandshakeError.UNSUPPORTED_PROTOCOL_VERSION)
        transport = args.get("transport", [b""])[0].decode("latin-1")
        if transport not in ("polling", "websocket") or (
            transport == "websocket" and not self.engine.options.allow_websocket
        ):
            raise HandshakeError(HandshakeError.UNKNOWN_TRANSPORT)
        sid = args.get("sid", [None])[0]
        return transport, sid.decode("latin-1") if sid is not None else None

    def _refuse(self, exc: HandshakeError) -> None:
        self.set_status(exc.status)
        self.set_header("Content-Type", "application/json")
        self._cors_headers()
        self.finish(orjson.dumps(exc.body()))

    def _cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin is not None and self.engine.options.origin_allowed(origin):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.set_header("Vary", "Origin")

    def _origin_ok(self) -> bool:
        return self.engine.options.origin_allowed(self.request.headers.get("Origin"))

    # ------------------------------------------------------------ HTTP verbs
    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            transport, sid = self._query()
        except HandshakeError as exc:
            return self._refuse(exc)
        if transport == "websocket":
            return await self._websocket_get(sid)
        if not self._origin_ok():
            return self._refuse(HandshakeError(HandshakeError.BAD_REQUEST))
        if sid is not None and self._elsewhere(sid):
            return await self._forward()
        try:
            if sid is None:
                self._polling = await self.engine.create_session(
                    build_environ(self.request, "polling"), "polling")
            else:
                self._polling = self.engine.lookup(sid)
            payload = await self._polling.handle_poll()
        except HandshakeError as exc:
            return self._refuse(exc)
        finally:
            self._polling = None
        connection = self.request.connection
        if connection is None or getattr(connection, "stream", None) is None or \
                connection.stream.closed():  # type: ignore[attr-defined]
            return
        self._cors_headers()
        self.set_header("Content-Type", _POLL_CONTENT_TYPE)
        self.finish(payload)

    # ------------------------------------------------------------ other workers' sessions
    def _elsewhere(self, sid: str) -> bool:
        siblings = self.engine.siblings
        return siblings is not None and siblings.elsewhere(sid)

    async def _forward(self) -> None:
        """Answer with what the session's own worker answers to this very request."""
        siblings = self.engine.siblings
        assert siblings is not None
        self._gone = asyncio.get_running_loop().create_future()
        try:
            status, headers, body = await siblings.forward(self.request, self._gone)
        except HandshakeError as exc:
            return self._refuse(exc)
        finally:
            self._gone = None
        if self.request.connection is None or self._finished:
            return
        self.set_status(status)
        for name, value in headers:
            self.add_header(name, value)
        self.finish(body)

    def _invalid_upgrade(self) -> None:
        self.set_status(400)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"detail": "Invalid WebSocket upgrade request"}))

    async def _websocket_get(self, sid: str | None) -> None:
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            # a proxy that drops the Upgrade header: say so instead of a silent failure
            return self._invalid_upgrade()
        if not self._origin_ok():
            return self._refuse(HandshakeError(HandshakeError.FORBIDDEN, status=403))
        elsewhere = sid is not None and self._elsewhere(sid)  # looked up by its worker
        if sid is not None and not elsewhere:
            try:
                session = self.engine.lookup(sid)
            except HandshakeError as exc:
                return self._refuse(exc)
            if session.closed:  # only waiting for its last poll: gone for a websocket
                return self._refuse(HandshakeError(HandshakeError.UNKNOWN_SID))
            # A session that cannot take this websocket (upgraded already, or probing
            # with another) gets it accepted and closed at once (open_websocket), as the
            # reference server does: its clients expect a close, not a failed handshake.
        self._upgrade_sid, self._upgrade_elsewhere = sid, elsewhere
        if not valid_key(self.request.headers.get("Sec-WebSocket-Key", "")):
            # RFC 6455 §4.2.1: a key that is not base64 of 16 bytes is a bad request
            return self._invalid_upgrade()
        if elsewhere and self.engine.options.compression:
            # Tornado's websocket cannot change process; the client keeps polling
            return self._refuse(HandshakeError(HandshakeError.BAD_REQUEST))
        if self.engine.options.compression:
            await super().get()  # permessage-deflate: Tornado's websocket implementation
        else:
            await self._accept_websocket()

    async def _accept_websocket(self) -> None:
        """The handshake (RFC 6455 §4.2), then the socket leaves Tornado for our transport."""
        headers = self.request.headers
        key = headers.get("Sec-WebSocket-Key", "")
        connection = {part.strip().lower() for part in headers.get("Connection", "").split(",")}
        if "upgrade" not in connection:
            return self._invalid_upgrade()
        if headers.get("Sec-WebSocket-Version") != "13":
            self.set_status(426)
            self.set_header("Sec-WebSocket-Version", "13")
            self.finish()
            return
        environ = build_environ(self.request, "websocket")
        stream = self.detach()
        try:
            sock = stream.socket.dup()  # the connection outlives Tornado's stream
        finally:
            stream.close()
        sid, siblings = self._upgrade_sid, self.engine.siblings
        if sid is not None and self._upgrade_elsewhere and siblings is not None:
            siblings.hand_off(sid, sock, key, environ)
            return
        await adopt_websocket(self.engine, sock, key, environ, sid)

    async def post(self, *args: Any, **kwargs: Any) -> None:
        try:
            transport, sid = self._query()
            if transport != "polling" or sid is None:
                raise HandshakeError(HandshakeError.BAD_HANDSHAKE_METHOD)
            if not self._origin_ok():
                raise HandshakeError(HandshakeError.BAD_REQUEST)
            if self._elsewhere(sid):
                return await self._forward()
            session = self.engine.lookup(sid)
            body = self.request.body
            if len(body) > self.engine.options.max_payload:
                session.close(self.engine.reason.TRANSPORT_ERROR, notify_client=False)
                raise HandshakeError((3, "Payload too large"), status=413)
            session.handle_post(body)
            # answered once its packets are read: a client sending more than its budget
            # waits here (it sends one POST at a time), its packets wait in memory no more
            # than one payload's worth
            await session.post_finished()
        except HandshakeError as exc:
            return self._refuse(exc)
        self._cors_headers()
        self.set_header("Content-Type", "text/html")
        self.finish("ok")

    def _other_method(self, *args: Any, **kwargs: Any) -> None:
        # GET opens and polls, POST sends; the reference server refuses anything else as
        # a bad handshake (no sid) or a bad request, with the usual error body, not 405
        try:
            _transport, sid = self._query()
            if sid is None:
                raise HandshakeError(HandshakeError.BAD_HANDSHAKE_METHOD)
            self.engine.lookup(sid)
            raise HandshakeError(HandshakeError.BAD_REQUEST)
        except HandshakeError as exc:
            self._refuse(exc)

    put = delete = patch = _other_method

    def options(self, *args: Any, **kwargs: Any) -> None:
        # CORS preflight for polling POSTs from another origin
        if self._origin_ok():
            self._cors_headers()
            self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            requested = self.request.headers.get("Access-Control-Request-Headers")
            if requested:
                self.set_header("Access-Control-Allow-Headers", requested)
            self.set_status(204)
        else:
            self.set_status(400)
        self.finish()

    def on_connection_close(self) -> None:
        # a long-poll whose client went away
        if self._polling is not None:
            self._polling.poll_cancelled()
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)  # withdrawn from the session's worker too
        super().on_connection_close()

    # ------------------------------------------------------------ websocket side
    def check_origin(self, origin: str) -> bool:
        return True  # checked in _websocket_get, with the configured allow-list

    def get_compression_options(self) -> dict[str, Any] | None:
        return {} if self.engine.options.compression else None

    @property
    def max_message_size(self) -> int:
        return self.engine.options.max_payload

    async def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)
        self.session = await self.engine.open_websocket(
            self, build_environ(self.request, "websocket"), self._upgrade_sid)

    async def on_message(self, message: str | bytes) -> None:
        if self.session is not None:
            self.session.on_ws_message(self, message)
        if self._reading is not None:
            # Tornado reads the next frame only once this returns: the session's hold on
            # reading becomes TCP backpressure here too
            await self._reading

    def on_ping(self, data: bytes) -> None:
        if self.session is not None:
            self.session.on_ws_control(self, len(data) + 6)

    def on_close(self) -> None:
        self.resume_reading()
        if self.session is not None:
            self.session.on_ws_closed(self)

    def cork(self) -> bool:
        return False  # Tornado writes each message itself

    def uncork(self) -> None:
        pass

    def pause_reading(self) -> None:
        if self._reading is None:
            self._reading = asyncio.get_running_loop().create_future()

    def has_unread(self) -> bool:
        return False  # Tornado reads frame by frame: what follows is not known here

    def resume_reading(self) -> None:
        reading, self._reading = self._reading, None
        if reading is not None and not reading.done():
            reading.set_result(None)

    # Tornado's websocket serves only connections with per-message compression, whose
    # frames differ per connection: a broadcast's shared frame is not used here.
    def send_frame(self, data: str | bytes | bytearray) -> None:
        self.send_wire_frame(b"", data)

    def send_message_text(self, text: bytes) -> None:
        self.send_wire_frame(b"", "4" + text.decode("utf-8"))

    def send_wire_frame(self, frame: Frame, message: Packet | str | bytes) -> None:
        if self._closing or self.ws_connection is None:
            return
        data = wire(message) if isinstance(message, Packet) else message
        if isinstance(data, bytearray):
            data = bytes(data)  # Tornado writes bytes or str
        try:
            future = self.write_message(data, binary=isinstance(data, bytes))
        except tornado.websocket.WebSocketClosedError:
            return
        size = len(data)
        self._pending_bytes += size
        if self._pending_bytes > self.engine.options.max_outbound_bytes:
            if self.session is not None:
                self.session.on_ws_overflow(self, self._pending_bytes)
            else:
                self.close_transport()
            return
        future.add_done_callback(lambda _f: self._sent(size))

    def _sent(self, size: int) -> None:
        self._pending_bytes -= size

    def close_transport(self, code: int | None = None, reason: str | None = None,
                        now: bool = False) -> None:
        # Tornado's closing handshake has its own timeout; `now` changes nothing here
        if not self._closing:
            self._closing = True
            self.close(code, reason)


def route(path: str, engine: EngineServer) -> tuple[str, type[EngineIOHandler], dict[str, Any]]:
    """The Tornado route for the Socket.IO path, with and without the trailing slash."""
    return (path.rstrip("/") + "/?", EngineIOHandler, {"engine": engine})


async def adopt_websocket(engine: EngineServer, sock: socket.socket, key: str,
                          environ: dict[str, Any], upgrade_sid: str | None) -> None:
    """Answer the handshake of a websocket whose request was read and checked, and give it
    to its session: the socket leaves Tornado for our transport."""
    options = engine.options
    ws = WebSocket(options.max_payload, options.max_outbound_bytes, engine.counters)
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: ws, sock=sock)
    except OSError:
        sock.close()
        return
    ws.write_handshake(handshake_response(key))
    session = await engine.open_websocket(ws, environ, upgrade_sid)
    if session is not None:
        ws.start(session)


async def adopt_handed_over(engine: EngineServer, sock: socket.socket, key: str,
                            environ: dict[str, Any], upgrade_sid: str) -> None:
    """`adopt_websocket` for a socket another worker handed over: that worker checked the
    request, but only this one knows whether the session can still take a websocket."""
    try:
        if engine.lookup(upgrade_sid).closed:
            raise HandshakeError(HandshakeError.UNKNOWN_SID)
    except HandshakeError as exc:
        _refuse_raw(sock, exc)
        return
    await adopt_websocket(engine, sock, key, environ, upgrade_sid)


def _refuse_raw(sock: socket.socket, exc: HandshakeError) -> None:
    body = orjson.dumps(exc.body())
    head = (f"HTTP/1.1 {exc.status} {tornado.httputil.responses.get(exc.status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode("latin-1")
    try:
        sock.setblocking(True)
        sock.settimeout(1.0)
        sock.sendall(head + body)
    except OSError:
        pass
    finally:
        sock.close()
