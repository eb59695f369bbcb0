"""The websocket transport of a session: RFC 6455 framing on an asyncio transport.

Tornado performs the HTTP upgrade (routing, origin checks, the handshake errors of the
Engine.IO specification), or front_door.py does for a new connection's plain handshake; the
accepted socket then leaves Tornado for an asyncio protocol.
Tornado's websocket keeps a chain of coroutines, a handler, the request and an IOStream
alive per connection and pays a Future and a callback per frame written; here a connection
is this object and its transport (uvloop's, in C, when the appliance runs on uvloop), a read
is a callback, and a write goes to the socket at once or into the transport's buffer.

Only unextended websockets come here; with per-message compression on, Tornado's own
implementation serves the connection (handler.py).

Reading is paced: at most a bounded number of frames is parsed per callback (the rest in a
later turn of the loop), and while the session holds its reading (inbound budget, backlog)
the transport stops reading the socket, so what the client sends waits in the kernel and
then in the client, not here.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import socket
import struct
from typing import Any, cast

from tornado.util import _websocket_mask  # Tornado's C speed-up where it is built

from .contracts import EngineStats, WsListener
from .protocol import Frame, Packet, frame_size, message_frame, websocket_frame

log = logging.getLogger("rt.conn")

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPS = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)

# close codes (RFC 6455 §7.4.1)
NORMAL, GOING_AWAY, PROTOCOL_ERROR = 1000, 1001, 1002
INVALID_DATA, POLICY, TOO_BIG = 1007, 1008, 1009

# after our close frame, how long the client has to answer before the connection is dropped
CLOSE_TIMEOUT_S = 5.0

# frames parsed per turn of the event loop; the rest of a big read waits for the next turn
FRAMES_PER_TURN = 64
# data frames parsed (to find the client's close frame) after ours before the rest is dropped
DISCARD_PARSED = 64

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# base64 of 16 bytes (RFC 6455 §4.2.1 item 5); the reference server's check
_KEY = re.compile(r"[+/0-9A-Za-z]{22}==")


def valid_key(key: str) -> bool:
    return _KEY.fullmatch(key) is not None


def accept_value(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + _GUID).digest()).decode()


def handshake_response(key: str) -> bytes:
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_value(key)}\r\n\r\n").encode("latin-1")


def _close_payload(code: int | None, reason: str | None) -> bytes:
    if code is None:
        return b""
    return struct.pack("!H", code) + (reason or "").encode("utf-8")[:123]


def _sets_nodelay(transport: asyncio.BaseTransport) -> bool:
    """uvloop's TCP transport sets TCP_NODELAY when it is made (and asking it for its socket
    would keep a socket object for the life of the connection)."""
    kind = type(transport)
    return kind.__name__ == "TCPTransport" and kind.__module__ == "uvloop.loop"


def _valid_close_code(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or 3000 <= code <= 4999


class _Turn:
    """The websockets written to in this turn of the event loop, each corked at its first
    frame and written once when the turn is over: a client that several broadcasts reach
    in one turn (the emits and typing events that arrived together) gets them in one system
    call, where a call per frame was most of a fan-out's CPU (profiled: 77 % of a saturated
    HTTP-emit fan-out in `transport.write`).

    The turn is over one turn of the loop later than it began: before the frames leave, the
    loop reads its sockets once more and runs what that woke, so the events that arrived
    while the last broadcast was being written join this one's write. Ended in the turn
    itself, the broadcasts of four typing senders, each waiting for its ack, left in a write
    each about every other time (2.2 deliveries per write to a 1000-member room, against 4
    now: as many as were in flight; uWebSockets.js drains a subscriber's messages once per
    iteration of its loop, after all of that iteration's reads, and writes 4 too). A loop
    that stops mid-turn leaves its turn behind: the next loop starts one of its own."""

    __slots__ = ("loop", "sockets")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sockets: list[WebSocket] = []

    def end(self) -> None:
        global _turn
        if _turn is self:
            _turn = None
        for ws in self.sockets:
            ws.uncork()


_turn: _Turn | None = None


def _corked_until_end_of_turn(ws: WebSocket) -> bool:
    """Cork `ws` until the end of the turn (`_Turn`); False outside a running loop."""
    global _turn
    loop = ws._loop  # (asking for the running loop is a getpid() per call on Python 3.11)
    if loop is None:
        try:
            loop = ws._loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
    turn = _turn
    if turn is None or turn.loop is not loop:  # (a turn of a loop that has stopped)
        turn = _turn = _Turn(loop)
        # (a callback queued by a callback runs in the loop's next turn, after its next
        # read of the sockets: the end comes one turn after this one)
        loop.call_soon(loop.call_soon, turn.end)
    turn.sockets.append(ws)
    ws._corked = []
    return True


class WebSocket(asyncio.Protocol):
    """One accepted websocket. The session it serves talks to it like to any transport:
    `send_wire_frame`, `send_frame`, `close_transport`, `probed`; it reports messages with
    `session.on_ws_message(self, msg)` and its end with `session.on_ws_closed(self)`."""

    __slots__ = ("max_message", "max_outbound", "stats", "session", "probed",
                 "transport", "_buf", "_fragments", "_fragment_op", "_fragment_size",
                 "_closing", "_close_timer", "_lost", "_held", "_turn_held", "_reading",
                 "_dropped", "_discarded", "_allowance", "_corked", "_corked_size", "_loop")

    def __init__(self, max_message: int, max_outbound: int, stats: EngineStats):
        self.max_message = max_message
        self.max_outbound = max_outbound
        # one message larger than max_outbound (a large document's state) is let through
        # once: its size is allowed on top of the limit until the buffer drained below it
        self._allowance = 0
        self.stats = stats
        # set once the session is open; reading waits until then
        self.session: WsListener | None = None
        self.probed = False  # upgrade probe seen (this websocket is upgrading a session)
        self.transport: asyncio.Transport | None = None
        # what was read and not parsed yet; None when nothing is (most of an idle
        # connection's life: an empty bytearray would still take 64 bytes)
        self._buf: bytearray | None = None
        self._fragments: list[bytes] | None = None
        self._fragment_op = 0
        self._fragment_size = 0
        self._closing = False  # our close frame is sent: no more data either way
        self._close_timer: asyncio.TimerHandle | None = None
        self._lost = False
        self._held = False  # the session stopped reading (pause_reading)
        self._turn_held = False  # the rest of a read waits for the next turn of the loop
        self._reading = True  # whether the transport reads the socket now
        self._dropped = False  # closing: what the client sends is dropped unread
        self._discarded = 0  # data frames parsed and discarded while closing
        # frames held while corked (None: not corked), and their size
        self._corked: list[Frame] | None = None
        self._corked_size = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # its loop, from its first write

    # ---------------------------------------------------------------- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not a subclass of asyncio.Transport: no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        if _sets_nodelay(transport):
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # small frames must not wait for the peer's delayed ACK (Nagle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._dropped:
            return
        buf = self._buf
        if buf is None:
            self._buf = bytearray(data)
        else:
            buf += data
        if self.session is not None and not self._held and not self._turn_held:
            self._parse()

    def eof_received(self) -> bool:
        return False  # the peer is gone for reading: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._buf = None
        self._fragments = None
        self._corked, self._corked_size = None, 0
        session, self.session = self.session, None
        # no cycles left (session <-> websocket <-> transport): a closed connection is freed
        # at once by reference counting, not by a later pass of the cyclic collector
        self.transport = None
        if session is not None:
            session.on_ws_closed(self)

    def pause_writing(self) -> None:  # the outbound limit is checked on every write instead
        pass

    def resume_writing(self) -> None:
        pass

    # ---------------------------------------------------------------- session side
    def start(self, session: WsListener) -> None:
        """The session is open: messages flow from now on (some may be buffered already)."""
        if self._lost:  # the client went away while the session was being opened
            session.on_ws_closed(self)
            return
        self.session = session
        if self._buf:
            self._parse()

    def write_handshake(self, response: bytes) -> None:
        """The HTTP answer that opens this websocket. It waits for the end of the turn like
        a frame, so the open packet written in the same turn leaves with it: one system
        call, and one segment for the client to read, where there were two."""
        self.send_wire_frame(response)

    def send_frame(self, data: str | bytes | bytearray) -> None:
        self.send_wire_frame(websocket_frame(data), data)

    def send_message_text(self, text: bytes) -> None:
        self.send_wire_frame(message_frame(text))

    def send_wire_frame(self, frame: Frame, message: Packet | str | bytes | None = None
                        ) -> None:
        """Write a framed message (a broadcast builds the frame once for all recipients).
        The transport sends at once what the kernel takes and buffers the rest; a client
        whose unsent output passes the limit is a slow consumer and is cut off. While
        corked, the frame waits for `uncork`, counted as unsent."""
        transport = self.transport
        if self._closing or transport is None:
            return
        # (every client of every broadcast passes here: one question to the transport)
        size = frame_size(frame)
        corked = self._corked
        if corked is None and _corked_until_end_of_turn(self):
            corked = self._corked
        if corked is not None:
            pending = transport.get_write_buffer_size() + self._corked_size
            corked.append(frame)
            self._corked_size += size
            unsent = pending + size
        else:
            pending = transport.get_write_buffer_size()
            if isinstance(frame, bytes):
                transport.write(frame)
            else:
                transport.writelines(frame)  # a large payload, not joined to its header
            unsent = transport.get_write_buffer_size()
        if pending <= self.max_outbound:
            self._allowance = 0  # whatever large message there was has gone out
        if size > self.max_outbound:
            self._allowance = max(self._allowance, size)
        if unsent > self.max_outbound + self._allowance:
            if self.session is not None:
                self.session.on_ws_overflow(self, unsent)
            else:
                self.close_transport()

    def cork(self) -> bool:
        """Hold what is written until `uncork`, which writes it with one system call (the
        acks of the messages handled in one turn of a session's inbox). False if it is
        corked already, or gone."""
        if self._corked is not None or self.transport is None:
            return False
        self._corked = []
        return True

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked:
            self._write_corked(corked)

    def _write_corked(self, corked: list[Frame]) -> None:
        self._corked_size = 0
        transport = self.transport
        if transport is None:
            return
        if len(corked) == 1 and isinstance(corked[0], bytes):
            transport.write(corked[0])
            return
        try:
            data = b"".join(corked)  # type: ignore[arg-type]
        except TypeError:  # large payloads (header, payload) among them: not copied
            parts: list[bytes | bytearray] = []
            for frame in corked:
                if isinstance(frame, bytes):
                    parts.append(frame)
                else:
                    parts.extend(frame)
            transport.writelines(parts)
            return
        transport.write(data)

    def unsent(self) -> int:
        if self.transport is None:
            return 0
        return self.transport.get_write_buffer_size() + self._corked_size

    def socket(self) -> Any:
        return self.transport.get_extra_info("socket") if self.transport is not None else None

    # ---------------------------------------------------------------- reading
    def has_unread(self) -> bool:
        return bool(self._buf)

    def pause_reading(self) -> None:
        """The session takes nothing more for now: stop after the current frame."""
        self._held = True
        self._update_reading()

    def resume_reading(self) -> None:
        if not self._held:
            return
        self._held = False
        self._update_reading()
        if self._buf and not self._turn_held:
            self._turn_held = True  # parse what was left in a turn of its own
            self._update_reading()
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_held = False
        self._update_reading()
        if not self._held and self.session is not None:
            self._parse()

    def _update_reading(self) -> None:
        """The transport reads while neither the session nor the parser holds it."""
        want = not (self._held or self._turn_held)
        transport = self.transport
        if want == self._reading or transport is None or self._lost:
            return
        self._reading = want
        if want:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def close_transport(self, code: int | None = None, reason: str | None = None,
                        now: bool = False) -> None:
        """Start the closing handshake: our close frame after what is queued, then the
        client's answer closes the connection (or the timeout drops it). `now`: a client
        that broke the rules (garbage, a flood) is not parsed any more: what it sends is
        dropped as it arrives, and our side of the connection is shut after the close
        frame. (Closing the socket with its data unread would reset the connection, and
        the client could lose the close frame that says why.)"""
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._write_control(OP_CLOSE, _close_payload(code, reason))
        if now:
            self._drop()
        loop = asyncio.get_running_loop()
        self._close_timer = loop.call_later(CLOSE_TIMEOUT_S, self._abort)
        # what the client sent before our close is discarded (RFC 6455 §1.4); reading on
        # is how its close frame is seen
        self._held = False
        self._update_reading()

    def _drop(self) -> None:
        """Read on, but only to drop what arrives, and shut our side after the close frame:
        the client sees the close, then the end of the stream."""
        self._dropped = True
        self._buf = None
        self._fragments = None
        self._turn_held = self._held = False
        self._update_reading()
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the client is gone already: connection_lost follows
                pass

    def _abort(self) -> None:
        self._close_timer = None
        if self.transport is not None and not self._lost:
            self.transport.abort()

    def _fail(self, code: int, why: str) -> None:
        """A protocol violation by the client: say why and close (RFC 6455 §7.1.7)."""
        log.info("websocket %s: %s, closing with %d",
                 self.session.sid if self.session is not None else "?", why, code)
        self.stats.protocol_errors += 1
        self._buf = None
        self._fragments = None
        if not self._closing:
            self.close_transport(code, why)
        self._finish()

    def _finish(self) -> None:
        """Close the TCP connection once what is buffered (our close frame) is written."""
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self.transport is not None and not self._lost:
            self.transport.close()

    def _write_control(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None:
            if self._corked:  # what was written before goes first; still corked after
                corked, self._corked = self._corked, []
                self._write_corked(corked)
            self.transport.write(struct.pack("!BB", 0x80 | opcode, len(payload)) + payload)

    # ---------------------------------------------------------------- inbound frames
    def _parse(self) -> None:
        buf = self._buf
        if buf is None:
            return
        frames = 0
        while not self._lost and not self._held and not self._dropped:
            if frames == FRAMES_PER_TURN:
                # a read of many small frames: the rest in the next turn, after the other
                # connections' callbacks; the socket is not read meanwhile
                self._turn_held = True
                self._update_reading()
                asyncio.get_running_loop().call_soon(self._next_turn)
                return
            frames += 1
            have = len(buf)
            if have < 2:
                return
            b0, b1 = buf[0], buf[1]
            opcode, size, pos = b0 & 0x0F, b1 & 0x7F, 2
            if size == 126:
                if have < 4:
                    return
                size, pos = (buf[2] << 8) | buf[3], 4
            elif size == 127:
                if have < 10:
                    return
                size, pos = int.from_bytes(buf[2:10], "big"), 10
            if b0 & 0x70:
                return self._fail(PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
            if not b1 & 0x80:
                return self._fail(PROTOCOL_ERROR, "unmasked client frame")
            if opcode in _CONTROL_OPS:
                if not b0 & 0x80 or size > 125:
                    return self._fail(PROTOCOL_ERROR, "fragmented or oversized control frame")
            elif opcode not in _DATA_OPS:
                return self._fail(PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif size + self._fragment_size > self.max_message:
                # refused before its bytes arrive: nothing of it is buffered
                return self._fail(TOO_BIG, "message too big")
            end = pos + 4 + size
            if have < end:
                return
            payload = _websocket_mask(bytes(buf[pos:pos + 4]), bytes(buf[pos + 4:end]))
            del buf[:end]
            if not buf and self._buf is buf:
                self._buf = None
            self._frame(b0 & 0x80, opcode, payload)

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if not self._closing:
                self._write_control(OP_PONG, payload)
                if self.session is not None:
                    self.session.on_ws_control(self, len(payload) + 6)
            return
        if opcode == OP_PONG:
            return
        if opcode == OP_CLOSE:
            return self._on_close_frame(payload)
        if self._closing:
            # after our close frame, data is discarded (RFC 6455 §1.4); a client that goes
            # on sending is not parsed any further
            self._discarded += 1
            if self._discarded > DISCARD_PARSED:
                self._drop()
            return
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                return self._fail(PROTOCOL_ERROR, "continuation without a message")
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            if not fin:
                return
            opcode, payload = self._fragment_op, b"".join(self._fragments)
            self._fragments, self._fragment_size = None, 0
        elif self._fragments is not None:
            return self._fail(PROTOCOL_ERROR, "new message inside a fragmented one")
        elif not fin:
            self._fragments, self._fragment_op = [payload], opcode
            self._fragment_size = len(payload)
            return
        message: str | bytes = payload
        if opcode == OP_TEXT:
            try:
                message = payload.decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(INVALID_DATA, "text message is not UTF-8")
        if self.session is not None:
            self.session.on_ws_message(self, message)

    def _on_close_frame(self, payload: bytes) -> None:
        if self._closing:  # the answer to ours: done
            return self._finish()
        code = None
        if len(payload) == 1:
            return self._fail(PROTOCOL_ERROR, "malformed close frame")
        if len(payload) >= 2:
            code = struct.unpack("!H", payload[:2])[0]
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(INVALID_DATA, "close reason is not UTF-8")
            if not _valid_close_code(code):
                return self._fail(PROTOCOL_ERROR, f"invalid close code {code}")
        self._closing = True
        self._write_control(OP_CLOSE, _close_payload(NORMAL if code is None else code, None))
        self._finish()
