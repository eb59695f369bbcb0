"""Tornado request handler for the Engine.IO path: handshake, polling and websocket.

Every refusal happens before Tornado accepts a websocket, as an HTTP error with the
standard JSON body, so no client is ever left holding an open, dead socket.
"""
from __future__ import annotations

import logging

import orjson
import tornado.iostream
import tornado.web
import tornado.websocket

from .protocol import HandshakeError, Packet, websocket_frame, wire
from .server import EngineServer

log = logging.getLogger("rt.conn")

_POLL_CONTENT_TYPE = "text/plain; charset=UTF-8"


def build_environ(request, transport: str) -> dict:
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
    for name, value in request.headers.get_all():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


class EngineIOHandler(tornado.websocket.WebSocketHandler):
    """Routed at the Socket.IO path; `engine` comes from the route's kwargs."""

    def initialize(self, engine: EngineServer) -> None:
        self.engine = engine
        self.session = None  # the session of this websocket
        self._polling = None  # the session whose long-poll this request is
        self.probed = False  # websocket probe seen (upgrade in progress)
        self._pending_bytes = 0
        self._closing = False
        self._socket = None  # the plain TCP socket, for writes that skip IOStream (send_wire_frame)

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
    async def get(self, *args, **kwargs):
        try:
            transport, sid = self._query()
        except HandshakeError as exc:
            return self._refuse(exc)
        if transport == "websocket":
            return await self._websocket_get(sid)
        if not self._origin_ok():
            return self._refuse(HandshakeError(HandshakeError.BAD_REQUEST))
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
        if self.request.connection.stream.closed():
            return
        self._cors_headers()
        self.set_header("Content-Type", _POLL_CONTENT_TYPE)
        self.finish(payload)

    async def _websocket_get(self, sid: str | None):
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            # a proxy that drops the Upgrade header: say so instead of a silent failure
            self.set_status(400)
            self.set_header("Content-Type", "application/json")
            return self.finish(orjson.dumps({"detail": "Invalid WebSocket upgrade request"}))
        if not self._origin_ok():
            return self._refuse(HandshakeError(HandshakeError.FORBIDDEN, status=403))
        if sid is not None:
            try:
                session = self.engine.lookup(sid)
            except HandshakeError as exc:
                return self._refuse(exc)
            if not session.can_upgrade():
                return self._refuse(HandshakeError(HandshakeError.BAD_REQUEST))
            self._upgrade_sid = sid
        else:
            self._upgrade_sid = None
        await super().get()

    async def post(self, *args, **kwargs):
        try:
            transport, sid = self._query()
            if transport != "polling" or sid is None:
                raise HandshakeError(HandshakeError.BAD_HANDSHAKE_METHOD)
            if not self._origin_ok():
                raise HandshakeError(HandshakeError.BAD_REQUEST)
            session = self.engine.lookup(sid)
            body = self.request.body
            if len(body) > self.engine.options.max_payload:
                session.close(self.engine.reason.TRANSPORT_ERROR, notify_client=False)
                raise HandshakeError((3, "Payload too large"), status=413)
            session.handle_post(body)
        except HandshakeError as exc:
            return self._refuse(exc)
        self._cors_headers()
        self.set_header("Content-Type", "text/html")
        self.finish("ok")

    def _other_method(self, *args, **kwargs):
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

    def options(self, *args, **kwargs):
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

    def on_connection_close(self):
        # a long-poll whose client went away
        if self._polling is not None:
            self._polling.poll_cancelled()
        super().on_connection_close()

    # ------------------------------------------------------------ websocket side
    def check_origin(self, origin: str) -> bool:
        return True  # checked in _websocket_get, with the configured allow-list

    def get_compression_options(self):
        return {} if self.engine.options.compression else None

    @property
    def max_message_size(self) -> int:
        return self.engine.options.max_payload

    async def open(self, *args, **kwargs):
        self.set_nodelay(True)
        # outbound backpressure: a write past this raises StreamBufferFullError (send_frame)
        stream = self.ws_connection.stream
        stream.max_write_buffer_size = self.engine.options.max_outbound_bytes
        if type(stream) is tornado.iostream.IOStream and not self.engine.options.compression:
            self._socket = stream.socket
        if self._upgrade_sid is None:
            try:
                self.session = await self.engine.create_session(
                    build_environ(self.request, "websocket"), "websocket", ws=self)
            except HandshakeError:
                self.close_transport()
            return
        session = self.engine.sessions.get(self._upgrade_sid)
        if session is None or not session.can_upgrade():  # changed while accepting
            self.close_transport()
            return
        self.session = session
        session.attach_websocket(self)

    def on_message(self, message):
        if self.session is not None:
            self.session.on_ws_message(self, message)

    def on_close(self):
        if self.session is not None:
            self.session.on_ws_closed(self)

    def send_frame(self, data: str | bytes) -> None:
        """Write one message without waiting; a client that stops reading is cut off."""
        self.send_wire_frame(websocket_frame(data), data)

    def send_wire_frame(self, frame: bytes, message) -> None:
        """Write an already framed message (built once for every recipient of a broadcast).
        `message` is the same message unframed (str, bytes or the Packet): only per-connection
        compression needs it.

        While nothing is buffered the frame goes straight to the socket: IOStream.write costs
        a Future, a scheduled callback and buffer bookkeeping per call, which on a fan-out is
        most of the CPU per recipient. What the kernel does not take is handed to the
        IOStream, which then owns ordering, writability and the outbound limit."""
        if self._closing or self.ws_connection is None:
            return
        sock = self._socket
        if sock is None:
            if self.engine.options.compression:  # frames differ per connection: Tornado's path
                self._send_compressed(wire(message) if isinstance(message, Packet) else message)
                return
            self._buffered_write(frame)
            return
        stream = self.ws_connection.stream
        if len(stream._write_buffer) or stream.closed():
            self._buffered_write(frame)
            return
        try:
            sent = sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # reset or broken pipe: the IOStream's write finds it and closes
        if sent < len(frame):
            self._buffered_write(frame[sent:] if sent else frame)

    def _buffered_write(self, frame: bytes) -> None:
        stream = self.ws_connection.stream
        if stream.closed():
            return
        try:
            stream.write(frame)
        except tornado.iostream.StreamBufferFullError:
            self._slow_consumer(len(stream._write_buffer))
        except tornado.iostream.StreamClosedError:
            pass

    def _send_compressed(self, data: str | bytes) -> None:
        try:
            future = self.write_message(data, binary=isinstance(data, bytes))
        except tornado.websocket.WebSocketClosedError:
            return
        size = len(data)
        self._pending_bytes += size
        if self._pending_bytes > self.engine.options.max_outbound_bytes:
            self._slow_consumer(self._pending_bytes)
            return
        future.add_done_callback(lambda _f, n=size: self._sent(n))

    def _slow_consumer(self, unsent: int) -> None:
        log.warning("session %s: slow consumer (%d bytes unsent), closing",
                    self.session.sid if self.session else "?", unsent)
        self.engine.slow_consumers += 1
        # the close frame must not hit the limit it reports; Tornado gives the client 5 s to
        # answer it, then drops the connection and the buffer with it
        if self.ws_connection is not None:
            self.ws_connection.stream.max_write_buffer_size = None
        # 1008 policy violation, with the reason a client's close event shows
        self.close_transport(1008, "outbound buffer full")
        if self.session is not None:  # gone now: nothing more is written to it
            self.session.close(self.engine.reason.TRANSPORT_ERROR, notify_client=False)

    def _sent(self, size: int) -> None:
        self._pending_bytes -= size

    def close_transport(self, code: int | None = None, reason: str | None = None) -> None:
        if not self._closing:
            self._closing = True
            self.close(code, reason)


def route(path: str, engine: EngineServer) -> tuple:
    """The Tornado route for the Socket.IO path, with and without the trailing slash."""
    return (path.rstrip("/") + "/?", EngineIOHandler, {"engine": engine})

