"""One Engine.IO session: its transport, outbound queue, heartbeat, upgrade and inbound flow.

A session lives on long-polling or on a websocket, and moves from the first to the second
at most once (the upgrade). Everything here runs on the event-loop thread; no locks.

Inbound packets are counted against the session's budget (inflow.py) as they are read;
messages go to its inbox (inbox.py). When the budget runs dry or the inbox backs up, the
session stops reading: the websocket's socket is paused, a polling POST's remaining
packets wait (and so does its answer, which is what paces a polling client).

Longer than most modules: besides the session's whole life on both transports, it holds
the sessions' ping timers (Heartbeats), which only sessions schedule.
"""
from __future__ import annotations

import asyncio
import contextvars
import heapq
import logging
import weakref
from typing import Any

from engineio.base_server import BaseServer as _EioBase

from .contracts import SessionHost, WsTransport
from .inbox import Inbox
from .inflow import InboundGate
from .protocol import (
    CLOSE,
    MESSAGE,
    NOOP,
    OPEN,
    PING,
    PONG,
    SEPARATOR,
    UPGRADE,
    Frame,
    HandshakeError,
    Packet,
    ProtocolError,
    decode_packet,
    encode_payload,
    payload_text,
    websocket_frame,
    wire,
)

log = logging.getLogger("rt.conn")
Reason = _EioBase.reason

_PONG_PROBE = "3probe"
# websocket close codes (RFC 6455 §7.4.1) with the reasons a client's close event shows,
# and whether what the client still sends is dropped unread (a flood is not parsed on)
WS_INVALID_PACKET = (1002, "invalid packet", False)
WS_OUTBOUND_FULL = (1008, "outbound buffer full", False)
WS_FLOOD = (1008, "inbound flood", True)


def ws_frame_of(pkt: Packet) -> Frame:
    """The websocket frame of a packet, built once and kept on the packet: a broadcast
    shares one Packet among all its recipients."""
    frame: Frame | None = pkt.__dict__.get("_rt_ws_frame")
    if frame is None:
        frame = pkt._rt_ws_frame = websocket_frame(wire(pkt))
    return frame


def _size(pkt: Packet) -> int:
    """Roughly what a queued packet will take on the wire (its data dominates)."""
    data = pkt.data
    return len(data) + 8 if isinstance(data, (str, bytes)) else 64


# Packets in one polling response: python-engineio clients refuse payloads of more than 16
# packets (their max_decode_packets), so a burst is handed out over several polls.
MAX_PACKETS_PER_POLL = 16

# How long a session closed by the server waits for the client's last poll, which carries
# the packets queued before the close (a refused CONNECT, a DISCONNECT) and the close packet.
CLOSE_LINGER_S = 5.0


# uvloop's timers count whole milliseconds: a beat due within one is due
_BEAT_GRANULARITY = 0.001


class _Beat:
    """A session's next ping in its loop's Heartbeats."""

    __slots__ = ("when", "session")

    def __init__(self, when: float, session: EngineSession):
        self.when = when
        self.session: EngineSession | None = session

    def __lt__(self, other: _Beat) -> bool:
        return self.when < other.when

    def cancel(self) -> None:
        self.session = None  # left in the heap, skipped when due


class Heartbeats:
    """The ping timers of a loop's sessions, on one timer of the loop. A timer of the loop
    per session (uvloop's TimerHandle with its libuv timer and context) costs every idle
    connection about 600 bytes; an entry in this heap about 80."""

    __slots__ = ("loop", "_heap", "_timer", "_timer_at", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._heap: list[_Beat] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def call_later(self, delay: float, session: EngineSession) -> _Beat:
        """`session._send_ping()` in `delay` seconds, unless the beat is cancelled."""
        beat = _Beat(self.loop.time() + delay, session)
        heapq.heappush(self._heap, beat)
        if self._timer is None or beat.when < self._timer_at:
            self._arm(beat.when)
        return beat

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        # a context of its own, not a copy of whoever's beat came first
        self._timer = self.loop.call_at(when, self._fire, context=contextvars.Context())

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        due = self.loop.time() + _BEAT_GRANULARITY
        while heap and heap[0].when <= due:
            beat = heapq.heappop(heap)
            session, beat.session = beat.session, None
            if session is None:
                continue
            try:
                session._send_ping()
            except Exception as exc:  # as the loop treats a failing timer: reported, the rest run
                self.loop.call_exception_handler({
                    "message": "Exception in a session's heartbeat", "exception": exc})
        while heap and heap[0].session is None:  # cancelled: not worth a wake-up
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0].when)


# Each loop's Heartbeats, held only by the timer it has armed in its loop (armed whenever a
# beat is due), so that nothing here keeps a loop that ended, or its sessions, alive.
_heartbeats: weakref.WeakValueDictionary[int, Heartbeats] = weakref.WeakValueDictionary()


def heartbeats(loop: asyncio.AbstractEventLoop) -> Heartbeats:
    beats = _heartbeats.get(id(loop))
    if beats is None or beats.loop is not loop:
        beats = _heartbeats[id(loop)] = Heartbeats(loop)
    return beats


class EngineSession:
    __slots__ = (
        "server", "sid", "environ", "transport", "_session", "closed",
        "queue", "queued_bytes", "queue_allowance", "ws", "_probe_ws", "_poll", "_posting",
        "_post_rest",
        "_post_at",
        "_post_done", "_post_failed", "inbox", "gate",
        "_ping_handle", "_pong_handle", "_pong_extended", "_linger_handle", "_upgrade_handle",
        "ping_interval", "ping_timeout", "close_reason",
    )

    def __init__(self, server: SessionHost, sid: str, environ: dict[str, Any], transport: str):
        self.server = server
        self.sid = sid
        self.environ = environ
        self.transport = transport
        # python-socketio's per-client data (`session`), made when it is first asked for
        self._session: dict[str, Any] | None = None
        self.closed = False
        # waiting for the next poll (polling, or mid-upgrade); made for the first packet:
        # a session opened on a websocket never queues
        self.queue: list[Packet] | None = None
        self.queued_bytes = 0  # about how much the queue holds (max_outbound_bytes bounds it)
        # one packet larger than the limit (a large document's state) may wait on top of it
        self.queue_allowance = 0
        self.ws: WsTransport | None = None  # the websocket once the session is on one
        self._probe_ws: WsTransport | None = None  # a websocket probing for an upgrade
        self._poll: asyncio.Future[None] | None = None  # the GET waiting for packets
        self._posting = False  # a POST is being read (its packets may wait for the budget)
        self._post_rest: str | None = None  # its payload, read up to _post_at
        self._post_at = 0
        self._post_done: asyncio.Future[None] | None = None  # its answer waits for this
        self._post_failed = False  # one of its packets was invalid (the answer is 400)
        # both call back this session's methods (no bound method kept for each callback)
        self.inbox = Inbox(self)
        self.gate = InboundGate(server, self.inbox, self)
        self._ping_handle: _Beat | None = None
        self._pong_handle: asyncio.TimerHandle | None = None
        self._pong_extended = False  # the pong deadline of this ping was extended once
        self._linger_handle: asyncio.TimerHandle | None = None
        self._upgrade_handle: asyncio.TimerHandle | None = None
        # ping settings are fixed per session at handshake (a reload applies to new ones)
        self.ping_interval = server.options.ping_interval
        self.ping_timeout = server.options.ping_timeout
        self.close_reason: str | None = None

    @property
    def session(self) -> dict[str, Any]:
        """python-socketio's per-client data."""
        if self._session is None:
            self._session = {}
        return self._session

    @session.setter
    def session(self, value: dict[str, Any]) -> None:
        self._session = value

    @property
    def _consumer(self) -> asyncio.Task[None] | None:
        """The task handing this session's messages to the handler, while there is one."""
        return self.inbox.consumer

    # ---------------------------------------------------------------- handshake
    def open_packet(self) -> Packet:
        opts = self.server.options
        upgrades = ["websocket"] if self.transport == "polling" and opts.allow_websocket else []
        return Packet(OPEN, {
            "sid": self.sid,
            "upgrades": upgrades,
            # milliseconds, rounded rather than truncated: 2.5 s is advertised as 2500
            "pingInterval": round(self.ping_interval * 1000),
            "pingTimeout": round(self.ping_timeout * 1000),
            "maxPayload": opts.max_payload,
        })

    def start_heartbeat(self) -> None:
        self._schedule_ping()

    # ---------------------------------------------------------------- heartbeat
    def _schedule_ping(self) -> None:
        self._ping_handle = heartbeats(asyncio.get_running_loop()).call_later(
            self.ping_interval, self)

    def _send_ping(self) -> None:
        self._ping_handle = None
        if self.closed:
            return
        self.send(Packet(PING))
        loop = asyncio.get_running_loop()
        self._pong_extended = False
        self._pong_handle = loop.call_later(self.ping_timeout, self._ping_timed_out)

    def _extend_pong_deadline(self) -> None:
        """Another packet arrived while the pong is due: the client is alive, and its pong
        may be queued behind that data (polling sends one POST at a time, a big one can
        take a while). Restart the deadline once per ping, as the reference server does;
        a client that never answers is still closed within two pingTimeouts."""
        if self._pong_handle is None or self._pong_extended:
            return
        self._pong_extended = True
        self._pong_handle.cancel()
        loop = asyncio.get_running_loop()
        self._pong_handle = loop.call_later(self.ping_timeout, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        self._pong_handle = None
        log.debug("session %s: no pong within %.3f s", self.sid, self.ping_timeout)
        self.close(Reason.PING_TIMEOUT, notify_client=False)

    def _on_pong(self) -> None:
        if self._pong_handle is not None:
            self._pong_handle.cancel()
            self._pong_handle = None
            self._schedule_ping()

    # ---------------------------------------------------------------- outbound
    def send(self, pkt: Packet) -> None:
        """Queue or write one packet; never blocks. Packets sent after close are dropped."""
        if self.closed:
            return
        ws = self.ws
        if ws is not None:
            ws.send_wire_frame(ws_frame_of(pkt), pkt)
            return
        limit = self.server.options.max_outbound_bytes
        if self.queued_bytes <= limit:
            self.queue_allowance = 0
        size = _size(pkt)
        if self.queue is None:
            self.queue = []
        self.queue.append(pkt)
        self.queued_bytes += size
        if size > limit:
            self.queue_allowance = max(self.queue_allowance, size)
        if self.queued_bytes > limit + self.queue_allowance:
            # a polling client that stopped collecting: cut it off, as a websocket is
            log.warning("session %s: slow consumer (%d bytes waiting for a poll), closing",
                        self.sid, self.queued_bytes)
            self.server.counters.slow_consumers += 1
            self.queue = None
            self.queued_bytes = 0
            self.close(Reason.TRANSPORT_ERROR, notify_client=False)
            return
        self._wake_poll()

    def send_message_text(self, text: bytes) -> None:
        """A MESSAGE packet whose text is given encoded (UTF-8): on a websocket it is framed
        as it is, without a Packet."""
        if self.closed:
            return
        if self.ws is not None:
            self.ws.send_message_text(text)
            return
        self.send(Packet(MESSAGE, text.decode("utf-8")))

    def cork(self) -> WsTransport | None:
        """Hold this session's output while its inbox hands messages over, so that what
        the handlers send in one turn goes out in one write: the websocket it corked (to
        be uncorked), or None."""
        ws = self.ws
        if ws is not None and ws.cork():
            return ws
        return None

    def _wake_poll(self) -> None:
        if self._poll is not None and not self._poll.done():
            self._poll.set_result(None)

    # ---------------------------------------------------------------- polling
    async def handle_poll(self) -> str:
        """A long-polling GET: the packets queued for this session, waiting if none."""
        if self.transport != "polling" or self.ws is not None:
            raise HandshakeError(HandshakeError.BAD_REQUEST)
        if self._poll is not None:
            # two concurrent GETs: the client is broken; the reference server closes
            self.close(Reason.TRANSPORT_ERROR, notify_client=False)
            raise HandshakeError(HandshakeError.BAD_REQUEST)
        if not self.queue and not self.closed:
            if self._probe_ws is not None and self._probe_ws.probed:
                # mid-upgrade: release the client at once so it can pause polling
                return encode_payload([Packet(NOOP)])
            self._poll = asyncio.get_running_loop().create_future()
            try:
                await self._poll
            finally:
                self._poll = None
            if self.closed and self.close_reason == Reason.CLIENT_DISCONNECT:
                # the client's close packet ends the GET it left waiting with a noop, as
                # the reference server does; what was queued is not for it any more
                self.server.forget(self)
                return encode_payload([Packet(NOOP)])
        queue = self.queue or []
        packets = queue[:MAX_PACKETS_PER_POLL]
        del queue[:MAX_PACKETS_PER_POLL]
        self.queued_bytes -= sum(map(_size, packets))
        if not queue:
            self.queue = None
        if self.closed and not queue:
            packets.append(Packet(CLOSE))
            self.server.forget(self)
        elif not packets:
            packets = [Packet(NOOP)]  # woken by an upgrade: an empty answer is a noop
        return encode_payload(packets)

    def poll_cancelled(self) -> None:
        """The client went away while its GET was waiting: the transport is gone."""
        if self._poll is not None:
            self._wake_poll()
            if self.ws is None and self._probe_ws is None:
                self.close(Reason.TRANSPORT_CLOSE, notify_client=False)

    def handle_post(self, body: bytes) -> None:
        """A polling POST carrying one payload of packets. They are read as the inbound
        budget allows: `post_finished` tells when all were (the POST's answer waits)."""
        if self.closed or self.transport != "polling" or self.ws is not None:
            raise HandshakeError(HandshakeError.BAD_REQUEST)
        if self._posting:
            self.close(Reason.TRANSPORT_ERROR, notify_client=False)
            raise HandshakeError(HandshakeError.BAD_REQUEST)
        try:
            text = payload_text(body)
        except ProtocolError as exc:
            self._invalid_input(exc)
            raise HandshakeError(HandshakeError.BAD_REQUEST) from exc
        self._posting, self._post_failed = True, False
        self._post_rest, self._post_at = text, 0
        self._read_post()

    async def post_finished(self) -> None:
        """Until the packets of the current POST are all read; HandshakeError if one of
        them was invalid (the session is closed then)."""
        if self._posting and self._post_done is None:
            self._post_done = asyncio.get_running_loop().create_future()
        if self._post_done is not None:
            await self._post_done
        if self._post_failed:
            raise HandshakeError(HandshakeError.BAD_REQUEST)

    def _read_post(self) -> None:
        text = self._post_rest
        while text is not None and not self.gate.held and not self.closed:
            if self._post_at > len(text):
                break
            end = text.find(SEPARATOR, self._post_at)
            end = len(text) if end < 0 else end
            raw, self._post_at = text[self._post_at:end], end + 1
            try:
                ptype, data = decode_packet(raw)
            except ProtocolError as exc:
                self._post_failed = True
                self._invalid_input(exc)
                break
            if not self._on_packet(ptype, data):
                break
            self.gate.account(len(raw), more=self._post_at <= len(text))
        if self.gate.held and not self.closed:
            return  # the rest when the session may read again (resume_reading)
        self._post_rest = None
        self._posting = False
        done, self._post_done = self._post_done, None
        if done is not None and not done.done():
            done.set_result(None)

    # ---------------------------------------------------------------- websocket
    def can_upgrade(self) -> bool:
        """Whether a websocket may probe this session now: only a live polling session,
        and one probe at a time (the reference server closes a second one, which would
        otherwise replace the first mid-handshake)."""
        return (self.transport == "polling" and self.ws is None and self._probe_ws is None
                and not self.closed)

    def attach_websocket(self, ws: WsTransport) -> None:
        """A websocket opened for this session: directly (new session) or to probe."""
        if self.ws is None and self.transport == "websocket":
            self.ws = ws
        else:
            self._probe_ws = ws
            loop = asyncio.get_running_loop()
            self._upgrade_handle = loop.call_later(
                self.server.options.upgrade_timeout, self._upgrade_timed_out)

    def _upgrade_timed_out(self) -> None:
        self._upgrade_handle = None
        probe, self._probe_ws = self._probe_ws, None
        if probe is not None:
            log.debug("session %s: upgrade not completed in time", self.sid)
            probe.close_transport()
            if self.closed:  # closed while its client sat paused on this probe: gone
                self.server.forget(self)

    def on_ws_message(self, ws: WsTransport, message: str | bytes) -> None:
        if ws is self._probe_ws:
            self._on_probe_message(ws, message)
            return
        if ws is not self.ws or self.closed:
            return
        if type(message) is str and message[:1] == "4":
            # a message, by far the most common packet: _on_packet's MESSAGE case, inline
            if self._pong_handle is not None:
                self._extend_pong_deadline()
            self.inbox.put(message[1:])
            if not self.closed:
                self.gate.account(len(message), more=ws.has_unread())
            return
        try:
            ptype, data = decode_packet(message)
        except ProtocolError as exc:
            self._invalid_input(exc)
            return
        if self._on_packet(ptype, data):
            self.gate.account(len(message), more=ws.has_unread())

    def on_ws_control(self, ws: WsTransport, size: int) -> None:
        """A websocket ping from the client: answered by the transport, but it is input
        like any other and counts against the budget."""
        if ws is self.ws and not self.closed:
            self.gate.account(size, more=ws.has_unread())

    def on_ws_overflow(self, ws: WsTransport, unsent: int) -> None:
        """A websocket's unsent output passed max_outbound_bytes: the client is too slow."""
        log.warning("session %s: slow consumer (%d bytes unsent), closing", self.sid, unsent)
        self.server.counters.slow_consumers += 1
        ws.close_transport(*WS_OUTBOUND_FULL)
        if ws is self.ws:  # gone now: nothing more is written to it
            self.close(Reason.TRANSPORT_ERROR, notify_client=False)

    def _on_probe_message(self, ws: WsTransport, raw: str | bytes) -> None:
        if raw == "2probe" and not ws.probed:
            ws.probed = True
            ws.send_frame(_PONG_PROBE)
            # release a waiting GET so the client can pause polling; a GET that comes
            # later gets its noop at once (handle_poll). Nothing is queued here: a noop
            # left in the queue would reach the client over the websocket after upgrade.
            self._wake_poll()
            return
        if raw == "5" and ws.probed:
            self._complete_upgrade(ws)
            return
        # anything else during the upgrade: abandon the probe, keep polling
        self._probe_ws = None
        ws.close_transport()

    def _complete_upgrade(self, ws: WsTransport) -> None:
        if self._upgrade_handle is not None:
            self._upgrade_handle.cancel()
            self._upgrade_handle = None
        self._probe_ws = None
        self.transport = "websocket"
        self.ws = ws
        queued, self.queue = self.queue or (), None
        self.queued_bytes = 0
        for pkt in queued:
            ws.send_wire_frame(ws_frame_of(pkt), pkt)
        self._wake_poll()  # a GET still waiting is answered with a noop and is the last one
        self.server.on_upgrade(self)
        if self.closed:  # closed during the upgrade: the queue went out, now say goodbye
            ws.send_frame(wire(Packet(CLOSE)))
            ws.close_transport()
            self.server.forget(self)
        elif self.gate.held:  # reading was stopped on polling: the websocket waits too
            ws.pause_reading()

    def on_ws_closed(self, ws: WsTransport) -> None:
        if ws is self._probe_ws:
            self._probe_ws = None
            return
        if ws is self.ws:
            self.close(Reason.TRANSPORT_CLOSE, notify_client=False)

    # ---------------------------------------------------------------- inbound
    def _on_packet(self, ptype: int, data: str | bytes | None) -> bool:
        """Handle one inbound packet of an established session; False once closed."""
        if ptype != PONG:
            self._extend_pong_deadline()
        if ptype == MESSAGE:
            self.inbox.put(data if data is not None else "")
        elif ptype == PONG:
            self._on_pong()
        elif ptype == CLOSE:
            self.close(Reason.CLIENT_DISCONNECT, notify_client=False)
            return False
        elif ptype == PING:
            # v4 heartbeats go server → client; a client ping is a protocol error
            self.close(Reason.TRANSPORT_ERROR, notify_client=False)
            return False
        # OPEN, UPGRADE, NOOP on an established transport carry nothing
        elif ptype not in (OPEN, UPGRADE, NOOP):  # pragma: no cover - decode_packet bounds it
            return False
        return not self.closed

    def _invalid_input(self, exc: ProtocolError) -> None:
        log.info("session %s: invalid packet (%s), closing", self.sid, exc)
        self.server.counters.protocol_errors += 1
        self.close(Reason.TRANSPORT_ERROR, notify_client=False, ws_close=WS_INVALID_PACKET)

    def hold_reading(self) -> None:
        """The gate stops reading: the websocket's socket, or the POST being read."""
        if self.ws is not None:
            self.ws.pause_reading()

    def resume_reading(self) -> None:
        if self.closed:
            return
        if self.ws is not None:
            self.ws.resume_reading()
        if self._post_rest is not None:
            self._read_post()

    def flooded(self) -> None:
        opts = self.server.options
        log.warning("session %s: held at its inbound budget (%g packets/s, %g bytes/s) for "
                    "%g s, closing as a flood", self.sid, opts.inbound_rate,
                    opts.inbound_bytes_rate, opts.flood_close_after)
        self.server.counters.flood_disconnects += 1
        self.close(Reason.TRANSPORT_ERROR, notify_client=False, drop_pending=True,
                   ws_close=WS_FLOOD)

    @property
    def held(self) -> bool:
        """Whether this session's reading is stopped now."""
        return self.gate.held

    # ---------------------------------------------------------------- close
    def close(self, reason: str = Reason.SERVER_DISCONNECT, notify_client: bool = True,
              drop_pending: bool = False, ws_close: tuple[int, str, bool] | None = None
              ) -> None:
        """Close once. The disconnect handler runs after messages received before.
        `drop_pending`: a message being handled was a protocol error (found above
        Engine.IO), or the client flooded, so those received after it are dropped, as the
        reference server does. `ws_close`: the close code and reason of a websocket, and
        whether to stop reading it at once."""
        if drop_pending:
            self.inbox.drop_pending()
        if self.closed:
            return
        self.closed = True
        for handle in (self._ping_handle, self._pong_handle):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._pong_handle = None
        self.gate.cancel()
        self.close_reason = reason
        if self._post_rest is not None:
            self._read_post()  # ends the POST being read: its answer goes out
        if self._probe_ws is not None and not self._probe_ws.probed:
            self._probe_ws.close_transport()
            self._probe_ws = None
        # A probe already answered stays: the client has paused polling and will only
        # speak again on it (the upgrade packet), so the packets queued before this close
        # and the close packet itself go out there (_complete_upgrade). Closing it instead
        # would leave the client paused for ever. Its upgrade timer keeps running, so a
        # client that never sends the upgrade packet does not keep the websocket open.
        if self._probe_ws is None and self._upgrade_handle is not None:
            self._upgrade_handle.cancel()
            self._upgrade_handle = None
        if self.ws is not None:
            # buffered frames (a DISCONNECT, a refused CONNECT) go out before the close
            if ws_close is not None:  # the client broke the rules: say which
                self.ws.close_transport(*ws_close)
            else:
                self.ws.close_transport()
            self.server.forget(self)
        elif notify_client and self._poll is None:
            # polling: keep the session until the client's last GET collects the queue and
            # the close packet, but not forever
            loop = asyncio.get_running_loop()
            self._linger_handle = loop.call_later(CLOSE_LINGER_S, self.server.forget, self)
        else:
            # a waiting GET returns the queue and the close packet, then forgets the session
            self._wake_poll()
            if not notify_client:
                self.server.forget(self)
        self.inbox.put_closed()

    def cancel_linger(self) -> None:
        if self._linger_handle is not None:
            self._linger_handle.cancel()
            self._linger_handle = None
