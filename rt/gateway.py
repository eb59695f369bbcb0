"""The Socket.IO event table: parse the payload, check the identity's rights, call a service.

`dispatch` is the one error boundary for client events. A malformed payload or a forbidden
action is answered with an error (in the ack when the client asked for one, else as an
`error` event) and changes nothing; an unexpected exception is logged with its traceback and
answered `internal`. A connection never dies from a bad event.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from socketio.exceptions import ConnectionRefusedError as Refused

from . import payloads as p
from . import rooms
from .auth import AuthError, Identity, TokenVerifier
from .channels import ChannelService
from .core.errors import StoreError, UsageFull
from .direct_stream import DirectStream
from .identities import IdentitySource
from .ledger import Ledger
from .limits import Limits
from .presence import PresenceService
from .rights import Rights
from .sio import SocketServer, ack_requested
from .typing_gate import TypingGate
from .usage import UsageService

log = logging.getLogger("rt.conn")

Handler = Callable[[str, Identity, Any], Awaitable[Any]]

MAX_USER_TOKENS = 10000

# open-webui's chat ids that are not saved chats (temporary, channel threads): no room
UNSAVED_CHAT_PREFIXES = ("temporary:", "local:", "channel:")
CHAT_EVENT_TYPES = ("join", "leave", "typing", "last_read_at")


class Gateway:
    def __init__(self, sio: SocketServer, verifier: TokenVerifier, source: IdentitySource,
                 rights: Rights, ledger: Ledger, presence: PresenceService,
                 usage: UsageService, channels: ChannelService, limits: Limits,
                 typing: TypingGate, unbound_limits: tuple[int, int] = (20, 2000)):
        self.sio = sio
        self.verifier = verifier
        self.source = source
        self.rights = rights
        self.ledger = ledger
        self.presence = presence
        self.usage = usage
        self.channels = channels
        self.limits = limits
        self.typing = typing
        self.identities: dict[str, Identity] = {}
        # the token each session proved itself with: open-webui's API is asked with it
        # (never logged, gone with the session)
        self.tokens: dict[str, str] = {}
        # the newest token of each user, kept after their sessions end (bounded): a note's
        # content debounced after its editor left is still written with it
        self.user_tokens: OrderedDict[str, str] = OrderedDict()
        # sockets accepted without a user yet (open-webui's sign-in page): sid → address
        self.unbound: dict[str, str] = {}
        # events named `{user_id}:{session_id}:{request_id}` (direct connections), if any
        self.direct_stream: DirectStream | None = None
        self.unbound_per_ip, self.unbound_max = unbound_limits
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
            try:
                self.limits.check_event(sid)
                if identity is None:
                    # an unbound socket may only bind itself (open-webui's sign-in page)
                    if name == "user-join" and sid in self.unbound:
                        return await self.bind_later(sid, args[0] if args else None)
                    raise p.Forbidden("not authenticated: send user-join with a token first")
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
            identity = self.identities.get(sid)
            # a direct connection's completion stream, named by its owner
            if (identity is not None and self.direct_stream is not None
                    and await self.direct_stream.handle(sid, identity, event, args)):
                return None
        except p.EventError as exc:
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
        if (token is None or token == "") and self.source.allows_unbound:
            self._accept_unbound(sid, ip)
            return
        try:
            await self._register(sid, ip, token, environ)
        except StoreError as exc:
            # the store is down or too slow: refuse with a reason (python-socketio would
            # send nothing for the exception and leave the client waiting) and undo
            log.warning("connect refused from %s: store unavailable: %s", ip, exc)
            self.errors["unavailable"] = self.errors.get("unavailable", 0) + 1
            self.identities.pop(sid, None)
            self.tokens.pop(sid, None)
            self.limits.disconnected(sid)
            try:
                await self.presence.disconnected(sid)
            except StoreError:
                pass  # an entry half written expires with this node's lease
            raise Refused("unavailable") from None

    def _accept_unbound(self, sid: str, ip: str) -> None:
        """A socket without a token, as open-webui's sign-in page opens one: it joins no
        room and may only send `user-join`; bounded per address and in all."""
        if len(self.unbound) >= self.unbound_max:
            self.limits.refused["unbound"] += 1
            raise Refused("rate_limited")
        if sum(1 for at in self.unbound.values() if at == ip) >= self.unbound_per_ip:
            self.limits.refused["unbound_per_ip"] += 1
            raise Refused("rate_limited")
        self.unbound[sid] = ip
        self.limits.connected(sid, ip)

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
        self.limits.connected(sid, ip)
        await self._bind(sid, identity, token)
        if not self._alive(sid):  # gone during the presence write
            await self.on_disconnect(sid, "transport close")
            raise Refused("gone")
        log.debug("connect %s user %s via %s", sid, identity.id, environ.get("rt.transport"))

    def _remember_token(self, sid: str, user_id: str, token: str) -> None:
        self.tokens[sid] = token
        self.user_tokens[user_id] = token
        self.user_tokens.move_to_end(user_id)
        while len(self.user_tokens) > MAX_USER_TOKENS:
            self.user_tokens.popitem(last=False)

    def token_for(self, user_id: str) -> str | None:
        """The newest token a session of this user proved itself with."""
        return self.user_tokens.get(user_id)

    async def _bind(self, sid: str, identity: Identity, token: str) -> None:
        self.identities[sid] = identity
        self._remember_token(sid, identity.id, token)
        await self.sio.save_session(sid, {"identity": identity})
        await self.sio.enter_room(sid, rooms.user(identity.id))
        await self.presence.connected(sid, identity)
        await self.ledger.bound(sid, identity, token)

    async def bind_later(self, sid: str, data: Any) -> dict:
        """`user-join` on an unbound socket: the token in the payload names its user."""
        token = p.token_of(p.obj(data))
        try:
            identity = await self.identify(token)
        except AuthError as exc:
            self.errors[exc.code] = self.errors.get(exc.code, 0) + 1
            raise p.EventError(f"user-join refused: {exc}", exc.code) from None
        if sid not in self.unbound or not self._alive(sid):
            raise p.EventError("the connection is gone", "gone")
        del self.unbound[sid]
        await self._bind(sid, identity, token)  # type: ignore[arg-type]
        return await self.user_join(sid, identity, data)

    def _alive(self, sid: str) -> bool:
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        session = self.sio.engine.sessions.get(eio_sid) if eio_sid is not None else None
        return session is not None and not session.closed

    async def identify(self, token: Any) -> Identity:
        return await self.source.identify(token)

    async def on_disconnect(self, sid: str, reason: str = "") -> None:
        identity = self.identities.pop(sid, None)
        self.tokens.pop(sid, None)
        self.unbound.pop(sid, None)
        self.limits.disconnected(sid)
        self.typing.forget(sid)
        if identity is None:
            return
        chats = [r[len("chat:"):] for r in self.sio.rooms(sid) if r.startswith("chat:")]
        await self.presence.disconnected(sid)
        await self.usage.drop(sid)
        await self.ledger.gone(sid)
        for chat_id in chats:
            await self._publish_chat_presence(chat_id, leaving=sid)
        await self.run_disconnect_hooks(sid, identity)

    async def reverify(self) -> int:
        """Re-verify every live socket's token (revoked, signed out, expired, role changed):
        such a socket is disconnected, and the client reconnects with what it has now.
        open-webui unreachable keeps the sockets. Returns how many were ended."""
        verdicts: dict[str, Identity | AuthError] = {}
        ended = 0
        for sid, token in list(self.tokens.items()):
            if token not in verdicts:
                try:
                    verdicts[token] = await self.identify(token)
                except AuthError as exc:
                    verdicts[token] = exc
            verdict = verdicts[token]
            if isinstance(verdict, AuthError) and verdict.code == "unavailable":
                continue
            if verdict != self.identities.get(sid, verdict):
                reason = verdict.code if isinstance(verdict, AuthError) else "identity changed"
                log.info("session %s ended on re-verification: %s", sid, reason)
                ended += 1
                await self.sio.disconnect(sid)
        return ended

    async def run_disconnect_hooks(self, sid: str, identity: Identity) -> None:
        """Tell services a session ended (here, or on a node that died)."""
        for hook in self.disconnect_hooks:
            try:
                await hook(sid, identity)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("disconnect hook failed for %s", sid)

    def check_token(self, sid: str, identity: Identity, data: dict) -> None:
        """A token inside a payload must be valid and belong to the connection's user; a
        newer one replaces the session's (open-webui's API is then asked with it)."""
        token = p.token_of(data)
        if token is None:
            return
        try:
            claims = self.verifier.verify(token)
        except AuthError as exc:
            raise p.Forbidden(f"payload token refused: {exc.code}") from None
        if claims["id"] != identity.id:
            raise p.Forbidden("the payload token belongs to another user")
        if sid in self.tokens:
            self._remember_token(sid, identity.id, token)

    # ------------------------------------------------------------------ events
    async def user_join(self, sid: str, identity: Identity, data: Any) -> dict:
        data = p.obj(data)
        self.check_token(sid, identity, data)
        channel_ids = await self.rights.channels_of(identity, self.tokens.get(sid), fresh=True)
        await self._enter_rooms(sid, [rooms.user(identity.id)]
                                + [rooms.channel(c) for c in channel_ids])
        return identity.public()

    async def join_channels(self, sid: str, identity: Identity, data: Any) -> dict:
        data = p.obj(data)
        self.check_token(sid, identity, data)
        wanted = await self.rights.channels_of(identity, self.tokens.get(sid), fresh=True)
        current = {r for r in self.sio.rooms(sid) if r.startswith("channel:")}
        for room in current - {rooms.channel(c) for c in wanted}:
            await self.sio.leave_room(sid, room)
        await self._enter_rooms(sid, [rooms.channel(c) for c in wanted])
        return {"channels": sorted(wanted)}

    async def join_note(self, sid: str, identity: Identity, data: Any) -> dict:
        data = p.obj(data)
        note_id = p.ident(data, "note_id")
        self.check_token(sid, identity, data)
        if await self.rights.note_access(identity, self.tokens.get(sid), note_id) is None:
            raise p.Forbidden("no read access to this note")
        await self._enter_rooms(sid, [rooms.note(note_id)])
        return {"ok": True}

    async def refresh_channels(self, user_id: str) -> None:
        """open-webui created a channel with this user in it (or added them): enter their
        sessions here into the channels they are now in. open-webui's own
        `enter_room_for_users` reaches only its own sockets, and the browser does not send
        `join-channels` for it."""
        members = self.sio.manager.rooms.get("/", {}).get(rooms.user(user_id), {})
        for sid in list(members):
            identity = self.identities.get(sid)
            if identity is None:
                continue
            try:
                wanted = await self.rights.channels_of(identity, self.tokens.get(sid), fresh=True)
                await self._enter_rooms(sid, [rooms.channel(c) for c in wanted])
            except p.EventError as exc:
                log.info("channels of %s not refreshed for %s: %s", user_id, sid, exc)

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
        await self.ledger.heartbeat(sid, identity, self.tokens.get(sid))

    async def usage_event(self, sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        model = p.ident(data, "model")
        # open-webui sends chat_id "" for a chat not saved yet
        p.text(data, "chat_id", max_len=p.MAX_ID)
        p.text(data, "action", max_len=64)
        try:
            await self.usage.touch(model, sid, *self.limits.usage_caps())
        except UsageFull as exc:
            raise self.limits.usage_refused(exc.scope) from None
        await self.ledger.model_used(sid, model)

    async def channel_event(self, sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        channel_id = p.ident(data, "channel_id")
        message_id = p.ident(data, "message_id", required=False)
        inner = p.obj(data.get("data"), "'data'")
        kind = p.text(inner, "type", max_len=64, required=True)
        if not self.sio.manager.in_room(sid, rooms.channel(channel_id)):
            raise p.Forbidden("not a member of this channel")
        if kind == "last_read_at":
            await self.ledger.channel_read(identity, self.tokens.get(sid), channel_id)
            return
        await self.channels.client_event(sid, identity, channel_id, message_id, kind,
                                         inner.get("data"))

    async def chat_event(self, sid: str, identity: Identity, data: Any) -> bool | None:
        """open-webui 0.12 shared chats: join/leave the chat's room (with presence), typing
        to its other viewers, read markers. join/leave/typing are acked with a boolean like
        open-webui's (False = refused, e.g. no access)."""
        data = p.obj(data)
        chat_id = p.ident(data, "chat_id")
        inner = p.obj(data.get("data"), "'data'")
        kind = p.text(inner, "type", max_len=64, required=True)
        if kind not in CHAT_EVENT_TYPES:
            raise p.BadRequest(f"unsupported chat event type {kind!r}")
        token = self.tokens.get(sid)
        if kind == "last_read_at":
            await self.ledger.chat_read(identity, token, chat_id)
            return None
        if chat_id.startswith(UNSAVED_CHAT_PREFIXES):
            return False
        room = rooms.chat(chat_id)
        if kind == "leave":
            await self.sio.leave_room(sid, room)
            await self.ledger.chat_joined(sid, chat_id, False)
            await self._publish_chat_presence(chat_id)
            return True
        if kind == "join":
            if await self.rights.chat_access(identity, token, chat_id) is None:
                return False
            await self._enter_rooms(sid, [room])
            await self.ledger.chat_joined(sid, chat_id, True)
            await self._publish_chat_presence(chat_id)
            return True
        typing = inner.get("data", {}).get("typing") if isinstance(inner.get("data"), dict) else None
        if not isinstance(typing, bool) or not self.sio.manager.in_room(sid, room):
            return False
        if await self.rights.chat_access(identity, token, chat_id) != "write":
            return False
        payload = {"chat_id": chat_id, "user_id": identity.id, "user": identity.public(),
                   "shared": True, "data": {"type": "typing", "data": {"typing": typing}}}
        await self.typing.offer(sid, room, lambda: self.sio.emit(
            "events", payload, room=room, skip_sid=sid))
        return True

    async def _publish_chat_presence(self, chat_id: str, leaving: str | None = None) -> None:
        room = rooms.chat(chat_id)
        members = self.sio.manager.rooms.get("/", {}).get(room, {})
        local = [(ident.id, ident.name) for sid in list(members) if sid != leaving
                 and (ident := self.identities.get(sid)) is not None]
        users = await self.ledger.chat_members(chat_id, local)
        await self.sio.emit("events", {
            "chat_id": chat_id, "shared": True,
            "data": {"type": "chat:presence", "data": {"users": users}}}, room=room)
