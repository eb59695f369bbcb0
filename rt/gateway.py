"""The Socket.IO event table: parse the payload, check the identity's rights, call a service.

`dispatch` is the one error boundary for client events. A malformed payload or a forbidden
action is answered with an error (in the ack when the client asked for one, else as an
`error` event) and changes nothing; an unexpected exception is logged with its traceback and
answered `internal`. A connection never dies from a bad event.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from socketio.exceptions import ConnectionRefusedError as Refused

from . import payloads as p
from . import rooms
from .auth import AuthError, Identity, TokenVerifier
from .backends import Store, StoreError, UsageFull
from .channels import ChannelService
from .directory import can_read
from .limits import Limits
from .presence import PresenceService
from .sio import SocketServer, ack_requested
from .usage import UsageService

log = logging.getLogger("rt.conn")

Handler = Callable[[str, Identity, Any], Awaitable[Any]]


class Gateway:
    def __init__(self, sio: SocketServer, verifier: TokenVerifier, store: Store,
                 presence: PresenceService, usage: UsageService, channels: ChannelService,
                 limits: Limits, trust_token_claims: bool = False):
        self.sio = sio
        self.verifier = verifier
        self.store = store
        self.presence = presence
        self.usage = usage
        self.channels = channels
        self.limits = limits
        self.trust_token_claims = trust_token_claims
        self.identities: dict[str, Identity] = {}
        self.events_in: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.disconnect_hooks: list[Callable[[str, Identity], Awaitable[None]]] = []

    def register(self) -> None:
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.event("user-join", self.user_join)
        self.event("join-channels", self.join_channels)
        self.event("join-note", self.join_note)
        self.event("heartbeat", self.heartbeat)
        self.event("usage", self.usage_event)
        self.event("events:channel", self.channel_event)
        self.event("events:chat", self.chat_event)
        self.sio.on("*", self.unknown_event)

    # ------------------------------------------------------------------ boundary
    def event(self, name: str, handler: Handler) -> None:
        async def dispatch(sid: str, *args: Any) -> Any:
            self.events_in[name] = self.events_in.get(name, 0) + 1
            identity = self.identities.get(sid)
            if identity is None:  # cannot happen: refused at connect; kept as a guard
                return self._fail(sid, name, p.Forbidden("not authenticated"))
            try:
                self.limits.check_event(sid)
                return await handler(sid, identity, args[0] if args else None)
            except p.EventError as exc:
                log.info("event %s from %s refused: %s %s", name, sid, exc.code, exc)
                return self._fail(sid, name, exc)
            except StoreError as exc:
                # the store is down or too slow (its own timeout bounded the wait): a fault
                # of ours that the client can retry, not a bug with a traceback
                log.warning("event %s from %s failed: store unavailable: %s", name, sid, exc)
                return self._fail(sid, name, p.EventError(
                    "the store is unavailable, try again", "internal"))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event %s from %s failed", name, sid)
                return self._fail(sid, name, p.EventError("internal error", "internal"))

        self.sio.on(name, dispatch)

    def _fail(self, sid: str, name: str, exc: p.EventError) -> dict | None:
        self.errors[exc.code] = self.errors.get(exc.code, 0) + 1
        if ack_requested.get():
            return exc.payload()
        # no ack to answer in: tell the sender with an `error` event
        asyncio.ensure_future(self.sio.emit(
            "error", {"message": str(exc), "error": exc.code, "event": name}, to=sid))
        return None

    async def unknown_event(self, event: str, sid: str, *args: Any) -> dict | None:
        try:
            self.limits.check_event(sid)  # unknown events cost the sender like known ones
        except p.RateLimited as exc:
            return self._fail(sid, event, exc)
        return self._fail(sid, event, p.BadRequest(f"unknown event {event[:64]!r}"))

    # ------------------------------------------------------------------ connection
    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        ip = environ.get("REMOTE_ADDR", "")
        try:
            self.limits.check_connect(ip)  # before any signature check: floods are cheap
        except p.RateLimited as exc:
            log.info("connect refused from %s: %s", ip, exc)
            raise Refused("rate_limited") from None
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            await self._register(sid, ip, token, environ)
        except StoreError as exc:
            # the store is down or too slow: refuse with a reason (python-socketio would
            # send nothing for the exception and leave the client waiting) and undo
            log.warning("connect refused from %s: store unavailable: %s", ip, exc)
            self.errors["unavailable"] = self.errors.get("unavailable", 0) + 1
            self.identities.pop(sid, None)
            self.limits.disconnected(sid)
            try:
                await self.presence.disconnected(sid)
            except StoreError:
                pass  # an entry half written expires with this node's lease
            raise Refused("unavailable") from None

    async def _register(self, sid: str, ip: str, token: Any, environ: dict) -> None:
        try:
            identity = await self.identify(token)
        except AuthError as exc:
            log.info("connect refused from %s: %s (%s)", ip, exc.code, exc)
            self.errors[exc.code] = self.errors.get(exc.code, 0) + 1
            raise Refused(exc.code) from None
        # the connection may have gone while the user was looked up (a close in the same
        # payload, a dropped websocket): python-socketio would not call on_disconnect for a
        # session that never finished connecting, so nothing may be left registered
        if not self._alive(sid):
            raise Refused("gone")
        self.identities[sid] = identity
        self.limits.connected(sid, ip)
        await self.sio.save_session(sid, {"identity": identity})
        await self.sio.enter_room(sid, rooms.user(identity.id))
        await self.presence.connected(sid, identity)
        if not self._alive(sid):  # gone during the presence write
            await self.on_disconnect(sid, "transport close")
            raise Refused("gone")
        log.debug("connect %s user %s via %s", sid, identity.id, environ.get("rt.transport"))

    def _alive(self, sid: str) -> bool:
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        session = self.sio.engine.sessions.get(eio_sid) if eio_sid is not None else None
        return session is not None and not session.closed

    async def identify(self, token: Any) -> Identity:
        claims = self.verifier.verify(token)
        user = await self.store.get_user(claims["id"])
        if user is None:
            name = claims.get("name")
            if self.trust_token_claims and isinstance(name, str) and name:
                role = claims.get("role") if claims.get("role") in ("user", "admin") else "user"
                return Identity(claims["id"], name, role)
            raise AuthError("user_unknown")
        if user.disabled:
            raise AuthError("user_disabled")
        if user.role == "pending":
            raise AuthError("user_pending")
        return Identity(user.id, user.name, user.role)

    async def on_disconnect(self, sid: str, reason: str = "") -> None:
        identity = self.identities.pop(sid, None)
        self.limits.disconnected(sid)
        self.channels.forget(sid)
        await self.presence.disconnected(sid)
        await self.usage.drop(sid)
        if identity is not None:
            await self.run_disconnect_hooks(sid, identity)

    async def run_disconnect_hooks(self, sid: str, identity: Identity) -> None:
        """Tell services a session ended (here, or on a node that died)."""
        for hook in self.disconnect_hooks:
            try:
                await hook(sid, identity)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("disconnect hook failed for %s", sid)

    def check_token(self, identity: Identity, data: dict) -> None:
        """A token inside a payload must be valid and belong to the connection's user."""
        token = p.token_of(data)
        if token is None:
            return
        try:
            claims = self.verifier.verify(token)
        except AuthError as exc:
            raise p.Forbidden(f"payload token refused: {exc.code}") from None
        if claims["id"] != identity.id:
            raise p.Forbidden("the payload token belongs to another user")

    # ------------------------------------------------------------------ events
    async def user_join(self, sid: str, identity: Identity, data: Any) -> dict:
        data = p.obj(data)
        self.check_token(identity, data)
        channel_ids = await self.store.channels_of_user(identity.id)
        await self._enter_rooms(sid, [rooms.user(identity.id)]
                                + [rooms.channel(c) for c in channel_ids])
        return identity.public()

    async def join_channels(self, sid: str, identity: Identity, data: Any) -> dict:
        data = p.obj(data)
        self.check_token(identity, data)
        wanted = await self.store.channels_of_user(identity.id)
        current = {r for r in self.sio.rooms(sid) if r.startswith("channel:")}
        for room in current - {rooms.channel(c) for c in wanted}:
            await self.sio.leave_room(sid, room)
        await self._enter_rooms(sid, [rooms.channel(c) for c in wanted])
        return {"channels": sorted(wanted)}

    async def join_note(self, sid: str, identity: Identity, data: Any) -> dict:
        data = p.obj(data)
        note_id = p.ident(data, "note_id")
        self.check_token(identity, data)
        note = await self.store.get_note(note_id)
        if note is None:
            raise p.NotFound(f"note {note_id!r} does not exist")
        if not can_read(note, identity.id, identity.is_admin):
            raise p.Forbidden("no read access to this note")
        await self._enter_rooms(sid, [rooms.note(note_id)])
        return {"ok": True}

    async def _enter_rooms(self, sid: str, wanted: list[str]) -> None:
        """Enter rooms within the per-connection room limit (all or none)."""
        current = set(self.sio.rooms(sid))
        new = [room for room in dict.fromkeys(wanted) if room not in current]
        self.limits.check_rooms(len(current), len(new))
        for room in new:
            await self.sio.enter_room(sid, room)

    async def heartbeat(self, sid: str, identity: Identity, data: Any) -> None:
        if data is not None and not isinstance(data, dict):
            raise p.BadRequest("payload must be an object")
        self.presence.heartbeat(identity.id)

    async def usage_event(self, sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        model = p.ident(data, "model")
        p.ident(data, "chat_id", required=False)
        p.text(data, "action", max_len=64)
        try:
            await self.usage.touch(model, sid, *self.limits.usage_caps())
        except UsageFull as exc:
            raise self.limits.usage_refused(exc.scope) from None

    async def channel_event(self, sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        channel_id = p.ident(data, "channel_id")
        message_id = p.ident(data, "message_id", required=False)
        inner = p.obj(data.get("data"), "'data'")
        kind = p.text(inner, "type", max_len=64, required=True)
        if not self.sio.manager.in_room(sid, rooms.channel(channel_id)):
            raise p.Forbidden("not a member of this channel")
        await self.channels.client_event(sid, identity, channel_id, message_id, kind,
                                         inner.get("data"))

    async def chat_event(self, sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        chat_id = p.ident(data, "chat_id")
        inner = p.obj(data.get("data"), "'data'")
        kind = p.text(inner, "type", max_len=64, required=True)
        if kind != "last_read_at":
            raise p.BadRequest(f"unsupported chat event type {kind!r}")
        # bounded per user: one more chat evicts the user's oldest marker
        await self.store.set_chat_read(chat_id, identity.id, self.channels.clock(),
                                       keep=self.limits.s.chat_reads_per_user)
