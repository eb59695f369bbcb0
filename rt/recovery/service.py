"""Socket.IO connection state recovery (protocol v5 as socket.io 4.6+ speaks it), across the
cluster.

- A session that may recover gets a private session id (`pid`, `<sid>.<secret>`) in its
  CONNECT answer, and every event sent to it outside an ack carries an offset as its last
  argument (socket.io-client keeps the last one it saw). Clients that cannot take that
  argument (python-socketio, by User-Agent: `[recovery] skip_user_agents`) get the events
  without it and no `pid`: they are not recoverable, and not affected.
- Each emit is recorded once (`RecoveryState.emit`: the log, bounded) and delivered by
  `deliver`, once encoded for the recoverable recipients and once without the offset for
  the others. On Redis every node, this one included, delivers what the log's script
  published, in the log's order.
- The session's record (rooms, user, secret) is written at bind, kept current while it
  lives (`sync`), and marked disconnected when its connection ends for a reason a client
  reconnects from (transport closed or failed, ping timeout, this node draining).
- A CONNECT with `pid` and `offset` whose token proves the record's user, within
  `max_disconnection`, gets the same sid, its rooms and identity, the events it missed in
  order and exactly once, and `pid` unchanged (the client's `recovered: true`). When the
  log cannot give every missed event (bounds, expiry, an event too large to keep) the
  session goes on with a new pid and no replay: the client sees `recovered: false` and
  refetches. A forged or another user's pid recovers nothing.
- While a session is recoverable, its leave is not announced: the features' disconnect
  hooks (chat presence, document editors, ...) run only when the window passed without a
  recovery, by whichever node claims the record first. A recovery announces no join.

- open-webui's own emits (its pub/sub, through the bridge) to this node's recoverable
  sessions, and to its sessions that are away (whose rooms the bridge keeps subscribed),
  are recorded too, addressed to exactly those sessions (`record_foreign`). Calls are kept
  until answered and asked again where the session recovers (calls.py).

Longer than most modules because recovery is one sequence seen from both ends: recording
and delivering emits, a session's record through its life, and the reconnect that takes it
over, restores it and replays what it missed without a gap or a repeat.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from engineio import packet as eio_packet
from socketio import packet as sio_packet

from ..auth import AuthError, Identity
from ..backends.recovery_state import (
    ZERO,
    Bounds,
    MemoryRecoveryState,
    Packet,
    RecoveryState,
    RedisRecoveryState,
    SessionRecord,
    parse_offset,
)
from ..backends.redis_conn import KeySpace
from ..core.errors import StoreError
from ..core.tasks import TaskGroup
from ..core.tokens import token_urlsafe
from ..metrics import Figure
from .appends import ForeignAppends, kept_form, mark_pending_gap
from .calls import PendingCalls

if TYPE_CHECKING:
    from ..backends.socketio_bridge import SocketioBridge
    from ..presence.service import PresenceService
    from ..sio import SocketServer

log = logging.getLogger("rt.recovery")

# python-socketio's disconnect reasons a client reconnects from by itself
RECOVERABLE = frozenset({"transport close", "transport error", "ping timeout"})
TAKEOVER_WAIT = 3.0  # seconds a recovery waits for the old connection to be let go
SYNC_INTERVAL = 1.0  # seconds between writes of changed room sets
CLAIM_GRACE = 10.0  # seconds a record outlives its window, for the leave to claim it
# seconds a stopping node keeps listening for the claims of the sessions it drained
HOLD_AT_STOP = 5.0
# the host id of the log's messages on the cluster channel: no node's, so every node,
# the emitting one included, delivers them (in the log's order)
RECOVERY_HOST_ID = "rt-recovery"

LeaveHook = Callable[[str, Identity], Awaitable[None]]


class Sessions(Protocol):
    """What recovery needs of the gateway (rt/gateway.py)."""

    identities: dict[str, Identity]
    presence: PresenceService

    async def identify(self, token: Any) -> Identity: ...
    def admits(self, ip: str) -> bool: ...
    async def rebind(self, sid: str, identity: Identity, token: Any, ip: str) -> None: ...


def _frames(text: str, blobs: tuple[bytes, ...]) -> list[eio_packet.Packet]:
    """One Socket.IO packet as Engine.IO messages: the text, then each attachment."""
    return [eio_packet.Packet(eio_packet.MESSAGE, text),
            *(eio_packet.Packet(eio_packet.MESSAGE, blob) for blob in blobs)]


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class RecoveryService:
    def __init__(self, sio: SocketServer, state: RecoveryState, node_id: str, *,
                 window: float, skip_user_agents: tuple[str, ...] = ()) -> None:
        self.sio = sio
        self.state = state
        self.node_id = node_id
        self.window = window
        self.skip_user_agents = skip_user_agents
        self.gateway: Sessions | None = None
        # what a leave runs once a session is not recoverable any more (set by the app:
        # the gateway's ledger and the features' disconnect hooks)
        self.on_leave: LeaveHook | None = None
        self.secrets: dict[str, str] = {}  # sid → secret: the local recoverable sessions
        self.records: dict[str, SessionRecord] = {}
        self.holding: dict[str, list[Packet]] = {}  # recovering: held deliveries
        self.draining: set[str] = set()
        self.taken: set[str] = set()  # local connections of sessions recovered elsewhere
        self.superseded: set[str] = set()  # the same, found late: presence is theirs
        self.results: Counter[str] = Counter()
        self.replayed = 0
        self.unrecorded: Counter[str] = Counter()
        self._since_refresh = 0.0
        self.gap_pending = False
        self.tasks = TaskGroup()  # calls waiting for their session, kept calls' removal
        # the bridge to open-webui's pub/sub, when there is one (set by the app): holds
        # the rooms of sessions away from this node, records open-webui's emits to them
        self.bridge: SocketioBridge | None = None
        self.calls = PendingCalls(sio, state, node_id, ttl=window * 2 + 300,
                                  tasks=self.tasks)
        self.appends = ForeignAppends(self, self.tasks)  # open-webui's emits, kept
        state.deliver = self.deliver

    # ------------------------------------------------------------------ who may recover
    def capable(self, environ: dict[str, Any] | None) -> bool:
        agent = (environ or {}).get("HTTP_USER_AGENT", "")
        return not any(agent.startswith(prefix) for prefix in self.skip_user_agents)

    def pid_of(self, sid: Any) -> str | None:
        secret = self.secrets.get(sid) if isinstance(sid, str) else None
        return None if secret is None else f"{sid}.{secret}"

    # ------------------------------------------------------------------ emits
    async def emit(self, event: str, data: Any, room: Any, skip_sid: Any) -> bool:
        """Record and deliver one emit; False when it must take the ordinary path (too
        large to keep: then recorded as a gap, and sent without offset)."""
        if isinstance(data, tuple):
            args = list(data)
        elif data is None:
            args = []
        else:
            args = [data]
        rooms = None if room is None else ([room] if isinstance(room, str) else list(room))
        skip = [] if skip_sid is None else (
            [skip_sid] if isinstance(skip_sid, str) else list(skip_sid))
        form = kept_form(event, args, self.state.bounds.max_packet_bytes)
        if form is None:
            self.unrecorded["too_large"] += 1
            await self.state.mark_gap(rooms, skip)
            return False
        prefix, blobs = form
        try:
            await mark_pending_gap(self)
            await self.state.emit(rooms, skip, prefix, blobs)
        except StoreError as exc:
            # the ordinary path still reaches whoever it can; the log has a hole now
            self.gap_pending = True
            self.unrecorded["unavailable"] += 1
            log.warning("emit not recorded for recovery: %s", exc)
            return False
        mirror = getattr(self.sio.manager, "mirror", None)
        if mirror is not None:  # open-webui's own socket server, as the manager would
            data_out: Any = args
            if blobs:  # python-socketio's pub/sub form of binary data
                placed, attachments = sio_packet.Packet.deconstruct_binary(args)
                data_out = [placed, *(base64.b64encode(a).decode() for a in attachments)]
            await mirror({"method": "emit", "event": event, "data": data_out,
                          "binary": bool(blobs), "namespace": "/", "room": room,
                          "skip_sid": skip_sid, "callback": None,
                          "host_id": self.sio.manager.host_id})
        return True

    async def away(self, sid: str) -> bool:
        """Whether `sid` is a session that lost its connection and may still recover."""
        try:
            record = await self.state.get(sid)
        except StoreError:
            return False
        return record is not None and not record.live

    async def call(self, event: str, data: Any, to: Any, callback: Any) -> bool:
        """A call (an event with an ack: a tool's confirmation or input dialog) to a
        session that is away but may recover: kept until it is back, on any node, then
        sent (the caller's own timeout still bounds the wait). False for any other."""
        if not isinstance(to, str) or self.sio.manager.is_connected(to, "/"):
            return False
        try:
            record = await self.state.get(to)
        except StoreError:
            return False
        if record is None:
            return False
        if record.live:
            if record.node != self.node_id:
                # connected on another node, which may have died without a word: kept
                # (once the emit below registered it) for wherever the session recovers
                args = list(data) if isinstance(data, tuple) else [] if data is None \
                    else [data]
                self.tasks.spawn(f"call guard {to}",
                                 self.calls.guard(to, event, args, callback))
            return False
        until = record.until or time.time() + self.window
        self.tasks.spawn(f"parked call {to}",
                         self._call_when_back(event, data, to, callback, until))
        self.results["call_parked"] += 1
        return True

    async def _call_when_back(self, event: str, data: Any, sid: str, callback: Any,
                              until: float) -> None:
        while time.time() < until:
            await asyncio.sleep(0.05)
            if self.sio.manager.is_connected(sid, "/"):
                break
            try:
                record = await self.state.get(sid)
            except StoreError:
                continue
            if record is not None and record.live:
                break
        else:
            return  # not back in its window: the caller times out as before
        self.results["call_sent_after_recovery"] += 1
        await self.sio.emit(event, data, to=sid, callback=callback)

    def attach(self, bridge: SocketioBridge) -> None:
        """The bridge to open-webui's pub/sub (Redis mode): it records open-webui's emits
        to this node's recoverable sessions here, and answers open-webui's calls asked
        again after a recovery."""
        self.bridge = bridge
        bridge.away.recorder = self
        self.calls.answer_foreign = bridge.answer

    def owns(self, sid: str) -> bool:
        """Whether open-webui's emits to this local session are recorded here."""
        return sid in self.secrets

    async def record_foreign(self, event: str, args: list[Any], sids: list[str]) -> bool:
        """An emit of open-webui's backend to these sessions (local and recoverable, or
        away and held here): recorded for exactly them, and delivered from the log. False
        when it could not be kept: the caller delivers it as before, and those sessions'
        recoveries across it fail (a marker). After the ones queued before it
        (`record_foreign_soon`)."""
        return await self.appends.keep(event, args, sids)

    async def record_foreign_soon(self, event: str, args: list[Any], sids: list[str],
                                  fallback: Callable[[], Awaitable[None]]) -> None:
        """`record_foreign` without waiting for the append (appends.py): what cannot be
        kept is handed to `fallback`, in the order of the emits."""
        await self.appends.put(event, args, sids, fallback)

    async def park_foreign_call(self, sid: str, event: str, args: list[Any],
                                origin: list[Any]) -> None:
        """A call of open-webui's to a session away from this node: asked where it
        recovers (calls.py)."""
        self.results["call_parked"] += 1
        await self.calls.made_for(sid, event, args, origin)

    async def keep_foreign_call(self, sid: str, event: str, args: list[Any],
                                origin: list[Any]) -> bool:
        """A call of open-webui's to `sid`, connected to no node here (heard on the main
        channel): kept, unsent, when `sid` is a recoverable session of another node (that
        node may have died; if it lives, it keeps the same call under the same key)."""
        try:
            record = await self.state.get(sid)
        except StoreError:
            return False
        if record is None or record.node == self.node_id:
            return False
        await self.calls.made_for(sid, event, args, origin)
        return True

    def pubsub_gap(self) -> None:
        """The bridge lost open-webui's pub/sub for a while: what it sent this node's
        recoverable and away sessions meanwhile is unknown, so their recoveries across
        this point fail (a marker for exactly them)."""
        held = self.bridge.away.held if self.bridge is not None else {}
        sids = sorted(set(self.secrets) | set(held))
        if sids:
            self.unrecorded["pubsub_lost"] += 1
            self.tasks.spawn("recovery pub/sub gap", self._mark_gap(sids))

    async def _mark_gap(self, sids: list[str]) -> None:
        try:
            await self.state.mark_gap(sids, [])
        except StoreError as exc:
            self.gap_pending = True  # a marker for everybody at the next emit
            log.warning("open-webui pub/sub gap not marked for recovery: %s", exc)

    async def sending(self, eio_sid: str, pkt: Any) -> None:
        """A call (an event with an ack id) is about to go out on this node: kept until
        answered when its session is recoverable."""
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is not None and sid in self.secrets:
            await self.calls.sent(sid, pkt)

    def deliver(self, offset: str, rooms: list[str] | None, skip: list[str],
                prefix: str, blobs: tuple[bytes, ...] = ()) -> None:
        """The local part of a recorded emit: no await, so deliveries keep the log's order."""
        manager = self.sio.manager
        if not manager.rooms.get("/"):
            return
        sessions = self.sio.engine.sessions
        with_offset: list[eio_packet.Packet] | None = None
        plain: list[eio_packet.Packet] | None = None
        skipped = frozenset(skip) if skip else frozenset()
        target: Any = rooms[0] if rooms is not None and len(rooms) == 1 else rooms
        for sid, eio_sid in manager.get_participants("/", target):
            if sid in skipped:
                continue
            if sid in self.secrets:
                held = self.holding.get(sid)
                if held is not None:
                    held.append((offset, prefix, blobs))
                    continue
                if with_offset is None:
                    with_offset = _frames(f'{prefix},"{offset}"]', blobs)
                frames = with_offset
            else:
                if plain is None:
                    plain = _frames(prefix + "]", blobs)
                frames = plain
            session = sessions.get(eio_sid)
            if session is not None:
                for frame in frames:
                    session.send(frame)

    # ------------------------------------------------------------------ lifecycle of a session
    async def bound(self, sid: str, identity: Identity, environ: dict[str, Any] | None,
                    ip: str = "") -> None:
        """A session bound at its CONNECT: recoverable when its client can be."""
        if not self.capable(environ):
            return
        secret = token_urlsafe(18)
        record = SessionRecord(
            sid=sid, secret=_hash(secret), user=identity.id, name=identity.name,
            role=identity.role, rooms=sorted(self.sio.manager.get_rooms(sid, "/")),
            since=await self.state.head(), node=self.node_id, ip=ip)
        await self.state.save(record, self._live_ttl)
        self.secrets[sid] = secret
        self.records[sid] = record

    @property
    def _live_ttl(self) -> float:
        return self.window + max(SYNC_INTERVAL * 5, self.window / 2)

    def drain(self, sids: list[str]) -> None:
        """These sessions are closed because this node stops: they stay recoverable."""
        self.draining.update(sids)

    async def disconnected(self, sid: str, reason: str) -> str:
        """What became of a bound session whose connection ended here: 'taken' (it lives on
        in a recovery: nothing to announce), 'superseded' (it recovered on another node
        already, which holds its presence entry now), 'deferred' (recoverable: its leave
        waits for the window), or 'ended'."""
        draining = sid in self.draining
        superseded = sid in self.superseded
        bridge = self.bridge
        if bridge is not None and sid in self.secrets and not superseded and (
                sid in self.taken or draining or reason in RECOVERABLE):
            # before anything else (its rooms are left right after this hook): what
            # open-webui sends it from now on is still heard here, and recorded for it
            bridge.away.hold(sid, self.sio.manager.get_rooms(sid, "/"),
                            time.time() + self.window)
        secret = self.secrets.pop(sid, None)
        record = self.records.pop(sid, None)
        self.holding.pop(sid, None)
        self.draining.discard(sid)
        if sid in self.taken:
            self.taken.discard(sid)
            if superseded:
                self.superseded.discard(sid)
                return "superseded"
            return "taken"  # held until the node where it recovers claims it
        if secret is None or record is None:
            return "ended"
        fate = "deferred"
        try:
            if not (draining or reason in RECOVERABLE):
                await self.state.drop(sid, self.node_id)
                await self.state.drop_calls(sid)
                fate = "ended"
            else:
                record.rooms = sorted(self.sio.manager.get_rooms(sid, "/"))
                # kept a little longer than the window: the leave claims it at its end
                record.until = time.time() + self.window
                if not await self.state.disconnected(record, self.window + CLAIM_GRACE):
                    fate = "superseded"  # its record is another node's: recovered there
        except StoreError as exc:
            log.warning("session %s: recovery state not written: %s", sid, exc)
            fate = "ended"
        if fate != "deferred" and bridge is not None:
            bridge.away.release(sid)
        return fate

    async def dead(self, sid: str, identity: Identity) -> bool:
        """A session of a node that died: True when its record says it may still recover
        (its leave then waits for the window, from now)."""
        try:
            record = await self.state.get(sid)
            if record is None:
                return False
            if record.live:
                record.until = time.time() + self.window
                return await self.state.disconnected(record, self.window + CLAIM_GRACE)
        except StoreError:
            return False
        return True

    async def sweep(self) -> None:
        """Announce the leaves of sessions whose window passed without a recovery: of any
        node (a node that stopped or died cannot), each once (the claim deletes the
        record: whoever deletes it announces)."""
        for record in await self.state.due(time.time()):
            if not await self.state.drop(record.sid, record.node):
                continue
            self.results["expired"] += 1
            await self._leave(record)

    async def _leave(self, record: SessionRecord) -> None:
        """A session whose record this node dropped will not recover: its leave."""
        await self.state.drop_calls(record.sid)
        if self.on_leave is not None:
            # the features see the rooms the session had, as at any leave
            self.sio.gone_rooms[record.sid] = record.rooms
            try:
                await self.on_leave(record.sid,
                                    Identity(record.user, record.name, record.role))
            finally:
                self.sio.gone_rooms.pop(record.sid, None)

    async def ended(self, sid: str) -> None:
        """open-webui disconnected a session that is away (held here): it must not
        recover what it had (its access changed); its leave now."""
        if self.bridge is not None:
            self.bridge.away.release(sid)
        try:
            record = await self.state.get(sid)
            if record is None or record.live or not await self.state.drop(sid, record.node):
                return
            self.results["ended_by_openwebui"] += 1
            await self._leave(record)
        except StoreError as exc:
            log.warning("session %s: not ended for recovery: %s", sid, exc)

    # ------------------------------------------------------------------ keeping records
    async def sync(self) -> None:
        """Write the records whose rooms changed (and all of them now and then: their TTL),
        so that a node killed without a goodbye leaves them current."""
        manager = self.sio.manager
        changed: list[SessionRecord] = []
        for sid, record in self.records.items():
            rooms = sorted(manager.get_rooms(sid, "/"))
            if rooms != record.rooms:
                record.rooms = rooms
                changed.append(record)
        self._since_refresh += SYNC_INTERVAL
        if self._since_refresh >= self.window / 3:
            self._since_refresh = 0.0
            changed = list(self.records.values())
        if changed:
            # a record another node holds now: the session recovered there while its old
            # connection here was thought alive (the takeover did not reach us)
            for sid in await self.state.save_many(changed, self._live_ttl):
                if sid in self.records:
                    self.superseded.add(sid)
                    await self._let_go(sid)
        if self.bridge is not None:
            self.bridge.away.expire(time.time())
        self.calls.expire()
        await self.sweep()

    def on_emit(self, payload: dict[str, Any]) -> None:
        """A recorded emit from the cluster channel, delivered as it is read (a plain
        function: no task per message, and the channel's order kept)."""
        handle = getattr(self.state, "handle", None)
        if handle is not None:
            handle(payload)

    async def on_takeover(self, payload: dict[str, Any]) -> None:
        sid = payload.get("sid")
        if isinstance(sid, str) and payload.get("node") != self.node_id:
            await self._let_go(sid)

    async def _let_go(self, sid: str) -> None:
        """Close this node's connection of a session that recovers elsewhere, quietly."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is None:
            return
        self.taken.add(sid)
        await self.sio.engine.disconnect(eio_sid)

    # ------------------------------------------------------------------ recovery
    async def recover(self, eio_sid: str, auth: dict[str, Any]) -> bool:
        """A CONNECT with `pid`: True when handled here (recovered, or went on as the same
        session with a new pid); False for the ordinary path (a new session, or a refusal
        there for a bad token)."""
        gateway = self.gateway
        pid = auth.get("pid")
        environ = self.sio.environ.get(eio_sid)
        if gateway is None or not isinstance(pid, str) or not self.capable(environ):
            return False
        if not gateway.admits((environ or {}).get("REMOTE_ADDR", "")):
            return False  # the ordinary path refuses it (connect rate)
        sid, _, secret = pid.rpartition(".")
        if not sid or not secret or len(pid) > 200:
            self.results["forged"] += 1
            return False
        try:
            identity = await gateway.identify(auth.get("token"))
        except AuthError:
            return False  # the ordinary path refuses it with the reason
        try:
            record = await self.state.get(sid)
        except StoreError as exc:
            log.warning("recovery of %s: state unavailable: %s", sid, exc)
            self.results["unavailable"] += 1
            return False
        if record is None:
            self.results["unknown"] += 1
            return False
        if not record.live and record.until and time.time() > record.until:
            self.results["expired"] += 1
            return False
        if not hmac.compare_digest(record.secret, _hash(secret)) or record.user != identity.id:
            self.results["forged"] += 1
            log.info("recovery of %s refused: pid does not match the session", sid)
            return False
        # a live record whose connection nobody lets go: its node died, and nobody held
        # the session's rooms on open-webui's pub/sub since
        unheld = False
        if record.live or self.sio.manager.is_connected(sid, "/"):
            unheld = not await self._take_over(sid, record)
        try:
            taken = await self.state.take(sid, record.secret)
        except StoreError:
            taken = None
        if taken is None:
            self.results["raced"] += 1
            return False
        ip = (environ or {}).get("REMOTE_ADDR", "")
        await self._restore(eio_sid, sid, secret, taken, identity, auth, ip, unheld)
        return True

    async def _take_over(self, sid: str, record: SessionRecord) -> bool:
        """The old connection is still open (a half-open TCP not timed out yet): let it go,
        here or on its node, and wait (bounded) until it is gone. False when it was not let
        go in time (its node is dead)."""
        manager = self.sio.manager
        if manager.is_connected(sid, "/"):
            await self._let_go(sid)
        elif record.node != self.node_id:
            await manager.publish_control("recovery:takeover",
                                          {"sid": sid, "node": self.node_id})
        gateway = self.gateway
        assert gateway is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TAKEOVER_WAIT
        while loop.time() < deadline:
            try:
                gone = (not manager.is_connected(sid, "/") and sid not in gateway.identities
                        and await gateway.presence.registry.user_of(sid) is None)
            except StoreError:
                gone = False
            if gone:
                return True
            await asyncio.sleep(0.02)
        log.warning("recovery of %s: the old connection was not let go within %g s",
                    sid, TAKEOVER_WAIT)
        return False

    async def _restore(self, eio_sid: str, sid: str, secret: str, record: SessionRecord,
                       identity: Identity, auth: dict[str, Any], ip: str,
                       unheld: bool = False) -> None:
        gateway = self.gateway
        assert gateway is not None
        manager = self.sio.manager
        self.holding[sid] = []
        if self.bridge is not None:  # the node that held it records until our claim
            self.bridge.away.begin_claim(sid)
        self.secrets[sid] = secret
        manager.basic_enter_room(sid, "/", None, eio_sid=eio_sid)
        manager.basic_enter_room(sid, "/", sid, eio_sid=eio_sid)
        self.calls.adopt(sid)  # fresh ack ids; this node's calls to it kept apart
        reason = ""
        missed = None
        try:
            for room in record.rooms:
                if room != sid:
                    await self.sio.enter_room(sid, room)
            await gateway.rebind(sid, identity, auth.get("token"), ip)
            # from here on this node records open-webui's emits for it (the node that
            # held it did so up to here); not confirmed: what it sent may be lost
            if self.bridge is not None and (
                    not await self.bridge.away.claim(sid, holder=not unheld) or unheld):
                reason = "unrecorded"
            offset = auth.get("offset")
            start = offset if isinstance(offset, str) else record.since
            missed = await self.state.missed(start, record.rooms, sid)
            reason = reason or missed.reason
        except StoreError as exc:
            reason = "unavailable"
            log.warning("recovery of %s: %s", sid, exc)
        except BaseException:
            self.holding.pop(sid, None)
            if self.bridge is not None:
                self.bridge.away.end_claim(sid)
            raise
        if self.bridge is not None:
            self.bridge.away.end_claim(sid)
        # from here to the end: no await, nothing delivered in between
        held = self.holding.pop(sid, [])
        if reason:
            secret = token_urlsafe(18)
            self.secrets[sid] = secret
            record.secret = _hash(secret)
            self.results[f"failed_{reason}"] += 1
            log.info("session %s reconnected without recovery (%s)", sid, reason)
        session = self.sio.engine.sessions.get(eio_sid)
        connect = self.sio.packet_class(sio_packet.CONNECT, {"sid": sid, "pid": f"{sid}.{secret}"},
                                        namespace="/").encode()
        last = ZERO
        if session is not None:
            session.send(eio_packet.Packet(eio_packet.MESSAGE, connect))
            if missed is not None and not reason:
                for offset, prefix, blobs in missed.packets:
                    for frame in _frames(f'{prefix},"{offset}"]', blobs):
                        session.send(frame)
                    last = parse_offset(offset) or last
                self.replayed += len(missed.packets)
            for offset, prefix, blobs in held:
                if (parse_offset(offset) or ZERO) > last:
                    for frame in _frames(f'{prefix},"{offset}"]', blobs):
                        session.send(frame)
        if not reason:
            self.results["recovered"] += 1
            log.info("session %s of user %s recovered (%d missed events)", sid, identity.id,
                     len(missed.packets) if missed is not None else 0)
        record.live = True
        record.until = 0.0
        record.node = self.node_id
        record.rooms = sorted(manager.get_rooms(sid, "/"))
        record.ip = ip
        self.records[sid] = record
        try:
            await self.state.save(record, self._live_ttl)
        except StoreError as exc:
            log.warning("session %s: recovery record not written: %s", sid, exc)
        # calls it had not answered (shown before the drop, or made while it was away)
        await self.calls.ask(sid, eio_sid)

    # ------------------------------------------------------------------ figures
    def figures(self) -> Iterator[Figure]:
        yield Figure("rt_recovery", "Reconnections with a pid, by outcome (recovered, or why "
                     "not); expired: sessions whose window passed", dict(self.results),
                     label="result", counter=True)
        yield Figure("rt_recovery_replayed_events", "Missed events replayed to recovered "
                     "sessions", self.replayed, counter=True)
        yield Figure("rt_recovery_unrecorded_events", "Emits not kept for recovery (a "
                     "recovery needing one fails)", dict(self.unrecorded), label="reason",
                     counter=True)
        yield Figure("rt_recovery_calls_asked_again", "Unanswered calls asked again after a "
                     "recovery", self.calls.asked, counter=True)
        yield Figure("rt_recovery_sessions", "Recoverable sessions connected to this node",
                     len(self.secrets))
        data = self.state.figures_data()
        if "entries" in data:
            yield Figure("rt_recovery_log_entries", "Emits kept for recovery (this node's "
                         "log)", data["entries"])
            yield Figure("rt_recovery_log_bytes", "Bytes of emits kept for recovery (this "
                         "node's log)", data["bytes"])
            yield Figure("rt_recovery_log_evicted", "Emits dropped from the recovery log "
                         "(bounds or age)", data["evicted"], counter=True)
            yield Figure("rt_recovery_pending", "Disconnected sessions whose leave waits for "
                         "their recovery window", data["pending"])
        if "appended" in data:
            yield Figure("rt_recovery_log_appended", "Emits appended to the cluster's "
                         "recovery log by this node", data["appended"], counter=True)
            yield Figure("rt_recovery_log_append_calls", "Script calls on Redis that "
                         "appended them (emits that came together go in one)",
                         data.get("append_calls", 0), counter=True)
            yield Figure("rt_recovery_log_repaired", "Emits this node missed on the cluster "
                         "channel (subscription lost) and delivered from the log",
                         data.get("repaired", 0), counter=True)

    def save_to(self, path: str) -> None:
        """One node on embedded state: keep what it knows for its next start (a restart
        within the window recovers its sessions)."""
        dump = getattr(self.state, "dump", None)
        if dump is None:
            return
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(dump())
        os.replace(tmp, path)

    def load_from(self, path: str) -> None:
        load = getattr(self.state, "load", None)
        if load is None or not os.path.exists(path):
            return
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            os.unlink(path)
            log.info("recovery: %d session(s) of the previous run may recover", load(raw))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("recovery: the previous run's state is not usable: %s", exc)

    async def close(self) -> None:
        """At a graceful stop, after the drain: the sessions this node holds (the drained
        ones) recover completely on another node only with this node's answer to their
        claim (socketio_away.py), so it listens a little longer, until they have (they
        reconnect within about a second) or HOLD_AT_STOP passed."""
        bridge = self.bridge
        if bridge is not None and bridge.away.held and bridge.listening:
            if not await bridge.away.none_held(HOLD_AT_STOP):
                log.info("%d drained session(s) not recovered elsewhere yet: their "
                         "recovery will not be complete", len(bridge.away.held))
        await self.appends.idle(HOLD_AT_STOP)  # what open-webui sent before the stop
        await self.tasks.stop()


def build_state(settings: Any, backend: Any) -> RecoveryState:
    """The recovery state of the deployment's backend: in process on embedded state, in
    Redis (next to the cluster channel) on Redis."""
    r = settings.recovery
    bounds = Bounds(max_packets=r.max_packets, max_bytes=r.max_bytes,
                    max_packet_bytes=r.max_packet_bytes, log_entries=r.log_entries,
                    log_bytes=r.log_bytes, window=r.max_disconnection)
    if backend.nodes_redis is None:
        return MemoryRecoveryState(bounds)
    manager = backend.client_manager
    return RedisRecoveryState(backend.nodes_redis, KeySpace(settings.state.key_prefix),
                              channel=manager.channel, sharded=manager.sharded,
                              host_id=RECOVERY_HOST_ID, bounds=bounds,
                              where=getattr(manager.target, "describe", lambda: "Redis")())
