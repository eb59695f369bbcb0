"""python-socketio's AsyncServer on our Engine.IO transport.

Three behaviours differ from stock python-socketio, all on purpose:
- a refused CONNECT (bad token, unknown namespace) closes the Engine.IO session after the
  CONNECT_ERROR is delivered (protocol §2: "the refused connection is closed");
- namespaces other than "/" are refused with the reference server's error body;
- inbound packets are decoded as strictly as the reference parser (socket.io-parser) and in
  the reference server's connection states: a malformed packet or one that makes no sense
  in the current state closes the connection. Stock python-socketio decodes leniently and
  dispatches whatever it got: `42{}` or `4` raise inside the server (the connection stays
  open in a half-known state), and an event named "connect" or "disconnect" reaches the
  connect/disconnect handlers with the client's arguments, i.e. a client could re-run
  authentication with another user's token on a live session.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Any, Protocol

import orjson
import socketio
from socketio import packet as sio_packet
from socketio.exceptions import ConnectionRefusedError as Refused

from .backends.sio_packets import dumps_plain, plain_packet
from .engine.server import EngineOptions, EngineServer
from .metrics import Figure

log = logging.getLogger("rt.conn")

# Event names the reference parser refuses from clients: they name the library's own events.
RESERVED_EVENTS = frozenset({
    "connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"})
MAX_ATTACHMENTS = 10  # the reference decoder's default
MAX_ACK_ID_DIGITS = 100  # python-socketio's bound (the reference has none): int() stays cheap
_ABSENT = object()  # a packet without a payload (not the same as a JSON null)


# ---------------------------------------------------------------- JSON of the event path
# python-socketio's JSON is the standard library's with python-engineio's bound on integers
# (engineio.json: at most 100 digits), and it builds a new decoder (and encoder) for every
# packet. orjson does the same work several times faster; where it would answer differently,
# the standard library still decides, so what is accepted and what it decodes to is unchanged.

def _safe_int(digits: str) -> int:
    if len(digits) > 100:  # engineio.json's rule: int() of a huge number is quadratic
        raise ValueError("Integer is too large")
    return int(digits)


_std_decoder = json.JSONDecoder(parse_int=_safe_int)
# orjson turns integers beyond 64 bits into floats: a run of 19 digits or more is left to
# the standard library (a long fraction too, harmlessly)
_LONG_NUMBER = re.compile(r"[0-9]{19}")


def loads(text: str) -> Any:
    """python-engineio's `json.loads`: ValueError (or RecursionError) for what it refuses.
    orjson refuses NaN, Infinity, out-of-range floats, lone surrogates and nesting deeper
    than 1024, all of which go to the standard library, which decides as before."""
    if _LONG_NUMBER.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return _std_decoder.decode(text)


class _Done:
    """An awaitable that is over at once: a message with nothing (more) to handle."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator function: the `return` above ends it at once


_DONE = _Done()


class MalformedPacket(ValueError):
    """An inbound Socket.IO packet the reference server would refuse; the connection is
    closed."""


class Decoded:
    """One inbound Socket.IO text packet, validated."""
    __slots__ = ("type", "namespace", "id", "data", "attachments", "sid")

    def __init__(self, ptype: int, namespace: str, ack_id: int | None, data: Any,
                 attachments: int):
        self.sid: str | None = None  # the Socket.IO session it is for, once known
        self.type = ptype
        self.namespace = namespace
        self.id = ack_id
        self.data = data
        self.attachments = attachments


# a run of ASCII digits (possibly empty: `match` always succeeds)
_DIGITS = re.compile("[0-9]*")


def decode_packet(text: str, loads) -> Decoded:
    """Socket.IO v5 text packet → Decoded, or MalformedPacket. Mirrors socket.io-parser's
    Decoder.decodeString and isPayloadValid."""
    if not text or not "0" <= text[0] <= "6":
        raise MalformedPacket("unknown packet type")
    ptype, i = ord(text[0]) - 48, 1
    attachments = 0
    if ptype == sio_packet.BINARY_EVENT or ptype == sio_packet.BINARY_ACK:
        end = _DIGITS.match(text, i).end()  # type: ignore[union-attr]
        if end == i or end >= len(text) or text[end] != "-":
            raise MalformedPacket("illegal attachments")
        digits = text[i:end]
        # more than two digits is more than MAX_ATTACHMENTS anyway (and int() stays cheap)
        attachments = int(digits) if len(digits) <= 2 else MAX_ATTACHMENTS + 1
        if not 1 <= attachments <= MAX_ATTACHMENTS:
            raise MalformedPacket("illegal attachments")
        i = end + 1
    namespace = "/"
    if text.startswith("/", i):
        comma = text.find(",", i)
        end = len(text) if comma == -1 else comma
        namespace, i = text[i:end], (end if comma == -1 else comma + 1)
    end = _DIGITS.match(text, i).end()  # type: ignore[union-attr]
    if end - i > MAX_ACK_ID_DIGITS:
        raise MalformedPacket("ack id too long")
    ack_id = int(text[i:end]) if end > i else None
    data: Any = _ABSENT
    if end < len(text):
        try:
            data = loads(text[end:])
        except (ValueError, RecursionError):  # nesting deeper than Python's stack
            raise MalformedPacket("payload is not JSON") from None
    _check_payload(ptype, ack_id, data, attachments)
    return Decoded(ptype, namespace, ack_id, None if data is _ABSENT else data, attachments)


def _check_payload(ptype: int, ack_id: int | None, data: Any, attachments: int) -> None:
    if ptype == sio_packet.CONNECT:
        ok = data is _ABSENT or isinstance(data, dict)
    elif ptype == sio_packet.DISCONNECT:
        ok = data is _ABSENT
    elif ptype in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
        # the reference also allows numeric event names; no handler here has one, and
        # python-socketio's catch-all handlers expect strings
        ok = (isinstance(data, list) and bool(data) and isinstance(data[0], str)
              and data[0] not in RESERVED_EVENTS)
    elif ptype in (sio_packet.ACK, sio_packet.BINARY_ACK):
        ok = isinstance(data, list) and ack_id is not None
    else:  # CONNECT_ERROR goes server → client only
        ok = False
    if not ok:
        raise MalformedPacket("invalid payload")
    try:
        if attachments and not _placeholders_valid(data, attachments):
            raise MalformedPacket("illegal attachments")
    except RecursionError:  # python-socketio's reconstruction would fail the same way
        raise MalformedPacket("payload nested too deeply") from None


def _placeholders_valid(data: Any, attachments: int) -> bool:
    """Every placeholder names an attachment that will come (reference: reconstructPacket
    throws "illegal attachments" otherwise)."""
    if isinstance(data, list):
        return all(_placeholders_valid(item, attachments) for item in data)
    if isinstance(data, dict):
        if data.get("_placeholder"):
            num = data.get("num")
            return type(num) is int and 0 <= num < attachments
        return all(_placeholders_valid(value, attachments) for value in data.values())
    return True


class Recovery(Protocol):
    """Connection state recovery as the server uses it (rt/recovery/service.py)."""

    async def emit(self, event: str, data: Any, room: Any, skip_sid: Any) -> bool: ...
    async def call(self, event: str, data: Any, to: Any, callback: Any) -> bool: ...
    def pid_of(self, sid: Any) -> str | None: ...
    async def recover(self, eio_sid: str, auth: dict[str, Any]) -> bool: ...
    async def sending(self, eio_sid: str, pkt: Any) -> None: ...


# Whether the event being handled asked for an acknowledgement: a failure is then answered
# in the ack, otherwise with an `error` event (protocol §3, §4). Handlers run inline
# (async_handlers=False), so the context variable is that of the event being handled.
ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested", default=False)


class SocketServer(socketio.AsyncServer):
    def __init__(self, engine_options: EngineOptions, client_manager=None, **kwargs):
        self._engine_options = engine_options
        super().__init__(
            client_manager=client_manager,
            async_mode="tornado",
            # one event at a time per client, in order: the engine already runs each
            # session's messages on their own task, so handlers never block reading
            async_handlers=False,
            namespaces="*",
            engine_options=engine_options,
            **kwargs,
        )
        self.on("connect", self._refuse_namespace, namespace="*")
        # connection state recovery (rt/recovery), when on: records and delivers the emits
        # that may be replayed, answers a CONNECT with `pid`, adds `pid` to CONNECT answers
        self.recovery: Recovery | None = None
        # rooms of sessions whose leave is announced after their connection ended (a
        # recovery window that passed): what `rooms(sid)` answers for them meanwhile
        self.gone_rooms: dict[str, list[str]] = {}
        # handler → whether it is a coroutine function (inspect's answer, asked once)
        self._coroutine_handlers: dict[Any, bool] = {}
        # python-socketio's line for every event received, asked of its logger once (its
        # level is set when the server is built: [server] protocol_logging)
        self._log_events = self.logger.isEnabledFor(logging.INFO)

    def _engineio_server_class(self):
        return EngineServer

    @property
    def engine(self) -> EngineServer:
        return self.eio

    def figures(self) -> Iterator[Figure]:
        engine = self.engine
        yield Figure("rt_connections", "Engine.IO sessions on this node", dict(engine.counts),
                     label="transport")
        yield Figure("rt_rooms", "Socket.IO rooms with members on this node",
                     len(self.manager.rooms.get("/", {})))
        stats = engine.stats()
        yield Figure("rt_limited", "", {
            "outbound_bytes": stats["slow_consumers"],
            "inbound_rate": stats["inbound_throttled"],
            "inbound_backlog": stats["inbound_backlogged"],
            "inbound_flood": stats["flood_disconnects"]}, label="limit", counter=True)
        yield Figure("rt_protocol_errors", "Connections closed for undecodable or malformed "
                     "input", stats["protocol_errors"], counter=True)
        yield Figure("rt_engine_messages_in", "Messages handed to the handlers",
                     stats["messages_in"], counter=True)
        yield Figure("rt_sessions_held", "Sessions whose socket is not read now (inbound "
                     "budget or backlog)", stats["sessions_held"])

    async def emit(self, event, data=None, to=None, room=None, skip_sid=None,
                   namespace=None, callback=None, ignore_queue=False):
        recovery = self.recovery
        if recovery is not None and not ignore_queue and namespace in (None, "/"):
            if callback is None:
                if await recovery.emit(event, data, to or room, skip_sid):
                    return
            elif await recovery.call(event, data, to or room, callback):
                return  # to a session that is away: sent when it is back
        await super().emit(event, data, to=to, room=room, skip_sid=skip_sid,
                           namespace=namespace, callback=callback, ignore_queue=ignore_queue)

    def rooms(self, sid, namespace=None):
        gone = self.gone_rooms.get(sid)
        return list(gone) if gone is not None else super().rooms(sid, namespace)

    async def _send_packet(self, eio_sid, pkt):
        # the CONNECT answer of a recoverable session carries its private session id
        if (self.recovery is not None and pkt.packet_type == sio_packet.CONNECT
                and isinstance(pkt.data, dict)):
            pid = self.recovery.pid_of(pkt.data.get("sid"))
            if pid is not None:
                pkt.data = {**pkt.data, "pid": pid}
        # a call (an event with an ack id): kept until answered, for a recovery
        if (self.recovery is not None and pkt.id is not None and pkt.namespace in (None, "/")
                and pkt.packet_type in (sio_packet.EVENT, sio_packet.BINARY_EVENT)):
            await self.recovery.sending(eio_sid, pkt)
        # python-socketio's Packet.encode with orjson, written as bytes (CONNECT answers,
        # refusals, calls); binary packets and unusual values take its own path
        ptype = pkt.packet_type
        if ptype != sio_packet.BINARY_EVENT and ptype != sio_packet.BINARY_ACK:
            plain = plain_packet(ptype, pkt.data, pkt.namespace, pkt.id)
            if plain is not None:
                self.eio.send_text(eio_sid, plain)
                return
        await super()._send_packet(eio_sid, pkt)

    async def _refuse_namespace(self, namespace, sid, environ, auth=None):
        raise Refused("Invalid namespace")

    # ---------------------------------------------------------------- events and acks
    # python-socketio's _handle_event, _handle_event_internal and _trigger_event with the
    # same outcome and fewer layers: an event decoded here (its session known connected)
    # goes straight to its handler, and a plain ack is encoded by orjson and written to
    # the session without a Packet object or the engine's generic send.
    async def _handle_event(self, eio_sid, namespace, id, data):
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if not self.manager.is_connected(sid, namespace):
            self.logger.warning("%s is not connected to namespace %s", sid, namespace)
            return
        await self._event(eio_sid, sid, namespace, id, data)

    async def _event(self, eio_sid: str, sid: str, namespace: str, id: int | None,
                     data: list[Any]) -> None:
        if self._log_events:
            self.logger.info('received event "%s" from %s [%s]', data[0], sid, namespace)
        token = ack_requested.set(id is not None)
        try:
            event = data[0]
            handlers = self.handlers.get(namespace)
            handler = handlers.get(event) if handlers is not None else None
            if handler is not None and self._is_coroutine(handler):
                # _trigger_event's first case, without a coroutine of its own
                try:
                    r = await handler(sid, *data[1:])
                except asyncio.CancelledError:  # as python-socketio does
                    r = None
            else:
                r = await self._trigger_event(event, namespace, sid, *data[1:])
            if r is self.not_handled or id is None:
                return
            if r is None:  # an ack without arguments (a heartbeat's): no encoder needed
                args: list[Any] = []
                body: bytes | None = b"[]"
            else:
                # tuples are expanded as several arguments (python-socketio's rule)
                args = list(r) if isinstance(r, tuple) else [r]
                body = dumps_plain(args)
            if body is None:  # binary attachments, or values only the stock encoder takes
                await self._send_packet(eio_sid, self.packet_class(
                    sio_packet.ACK, namespace=namespace, id=id, data=args))
            elif namespace == "/":
                self.eio.send_text(eio_sid, b"3%d%b" % (id, body))
            else:
                self.eio.send_text(eio_sid, b"3%b,%d%b" % (namespace.encode(), id, body))
        finally:
            ack_requested.reset(token)

    async def _trigger_event(self, event, namespace, *args):
        handlers = self.handlers.get(namespace)
        handler = handlers.get(event) if handlers is not None else None
        if handler is None or event == "disconnect" or not self._is_coroutine(handler):
            # catch-alls, the legacy one-argument disconnect, plain functions: the stock
            # resolution and call
            return await super()._trigger_event(event, namespace, *args)
        try:
            return await handler(*args)
        except asyncio.CancelledError:  # as python-socketio does
            return None

    def _is_coroutine(self, handler: Callable[..., Any]) -> bool:
        known = self._coroutine_handlers.get(handler)
        if known is None:
            known = self._coroutine_handlers[handler] = inspect.iscoroutinefunction(handler)
        return known

    async def _handle_eio_connect(self, eio_sid, environ):
        # The environ is kept for the connection's life, and its strings (method, path,
        # query, address, user agent) are the same for most connections: one shared copy
        # of each instead of one per connection (about 250 bytes each)
        for key, value in list(environ.items()):
            if type(value) is str:
                environ[key] = sys.intern(value)
        await super()._handle_eio_connect(eio_sid, environ)

    # ---------------------------------------------------------------- inbound packets
    def _handle_eio_message(self, eio_sid: str, data: str | bytes) -> Awaitable[None]:
        """Replaces python-socketio's lenient dispatcher (see the module docstring). Not a
        coroutine of its own (this runs for every message): what it returns is the event's
        coroutine, or the other packets' one."""
        try:
            pkt = self._decode(eio_sid, data)
        except MalformedPacket as exc:
            log.info("session %s: %s, closing", eio_sid, exc)
            self._binary_packet.pop(eio_sid, None)
            self.eio.close_session(eio_sid, self.eio.reason.TRANSPORT_ERROR)
            return _DONE
        if pkt is None:  # a binary packet waiting for more attachments
            return _DONE
        if type(pkt) is Decoded and pkt.type == sio_packet.EVENT:
            # the common case: its session is connected
            return self._event(eio_sid, pkt.sid or "", pkt.namespace, pkt.id, pkt.data)
        return self._handle_packet(eio_sid, pkt)

    async def _handle_packet(self, eio_sid: str, pkt: Any) -> None:
        """A packet other than a text EVENT."""
        if type(pkt) is Decoded:
            ptype, namespace = pkt.type, pkt.namespace
            if ptype == sio_packet.CONNECT:
                await self._handle_connect(eio_sid, namespace, pkt.data)
            elif ptype == sio_packet.DISCONNECT:
                await self._handle_disconnect(eio_sid, namespace,
                                              self.reason.CLIENT_DISCONNECT)
            else:
                await self._handle_ack(eio_sid, namespace, pkt.id, pkt.data)
        elif pkt.packet_type == sio_packet.BINARY_EVENT:  # complete with its attachments
            await self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        else:
            await self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)

    def _decode(self, eio_sid: str, data: str | bytes):
        """The complete packet this message ends (a Decoded text packet, or a binary one
        with its attachments), None if more attachments are due."""
        pending = self._binary_packet.get(eio_sid)
        if pending is not None:
            if not isinstance(data, bytes):
                raise MalformedPacket("text packet while binary attachments are due")
            if not pending.add_attachment(data):
                return None
            del self._binary_packet[eio_sid]
            return pending
        if not isinstance(data, str):
            raise MalformedPacket("binary data without a binary packet")
        decoded = decode_packet(data, loads)
        # the reference server's states: CONNECT to a namespace the client is not in,
        # anything else only to a namespace it is in
        if decoded.type == sio_packet.CONNECT:
            if self.manager.sid_from_eio_sid(eio_sid, decoded.namespace) is not None:
                raise MalformedPacket(f"second CONNECT to {decoded.namespace}")
        else:
            decoded.sid = self.manager.connected_sid(eio_sid, decoded.namespace)
            if decoded.sid is None:
                raise MalformedPacket(f"packet type {decoded.type} outside "
                                      f"{decoded.namespace}")
        if decoded.attachments:
            pkt = self.packet_class(decoded.type, decoded.data, namespace=decoded.namespace,
                                    id=decoded.id, binary=False)
            pkt.attachment_count = decoded.attachments
            self._binary_packet[eio_sid] = pkt
            return None
        return decoded

    async def _handle_connect(self, eio_sid, namespace, data):
        if (self.recovery is not None and namespace == "/" and isinstance(data, dict)
                and "pid" in data):
            if await self.recovery.recover(eio_sid, data):
                return
        await super()._handle_connect(eio_sid, namespace, data)
        # a CONNECT that was refused leaves the session without any namespace: close it
        # (the queued CONNECT_ERROR is flushed to the client first)
        if not any(
            self.manager.sid_from_eio_sid(eio_sid, ns) is not None
            for ns in list(self.manager.get_namespaces())
        ):
            await self.eio.disconnect(eio_sid)
