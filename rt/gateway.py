"""The socket edge: connections (bound to a user, or unbound until `user-join`) and the one
error boundary every client event goes through. Features bring their own handlers
(`SocketFeature`: an object whose `handlers()` maps event names to methods, and which may
be told of every ended session with `disconnected`); the composition root adds them.

`dispatch` is the one error boundary for client events. A malformed payload or a forbidden
action is answered with an error (in the ack when the client asked for one, else as an
`error` event) and changes nothing; an unexpected exception is logged with its traceback and
answered `internal`. A connection never dies from a bad event.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

from socketio.exceptions import ConnectionRefusedError as Refused

from . import payloads as p
from . import rooms
from .auth import AuthError, Identity, TokenVerifier
from .core.errors import StoreError
from .core.tasks import TaskGroup
from .identities import IdentitySource
from .ledger import Ledger
from .limits import Limits
from .metrics import Figure
from .presence.service import PresenceService
from .recovery.service import RecoveryService
from .rights import Rights
from .sio import SocketServer, ack_requested
from .typing_gate import TypingGate
from .usage.service import UsageService

log = logging.getLogger("rt.conn")

# (sid, identity of the connection, the event's first argument) → the ack's value
Handler = Callable[[str, Identity, Any], Awaitable[Any]]
# (sid, identity, event name, arguments) → whether it handled an event no feature names
CatchAll = Callable[[str, Identity, str, tuple[Any, ...]], Awaitable[bool]]
DisconnectHook = Callable[[str, Identity], Awaitable[None]]

MAX_USER_TOKENS = 10000


class SocketFeature(Protocol):
    """What a feature's socket edge (`<feature>/events.py`) gives the gateway. It may also
    have `disconnected(sid, identity)`, told of every ended session, and `paced`: the names
    of its events that a bound session is never refused for rate (an editor's Yjs updates:
    open-webui does not resend a refused one). Those are slowed instead, by the engine's
    read backpressure on the sender's socket."""

    def handlers(self) -> Mapping[str, Handler]: ...


class Gateway:
    def __init__(self, sio: SocketServer, verifier: TokenVerifier, source: IdentitySource,
                 rights: Rights, ledger: Ledger, presence: PresenceService,
                 usage: UsageService, limits: Limits, typing: TypingGate, tasks: TaskGroup,
                 unbound_limits: tuple[int, int] = (20, 2000), keep_tokens: bool = True):
        """`keep_tokens`: keep each session's token for the owner of users to be asked
        with (open-webui); the appliance's own directory decides without it, and a token
        kept per idle connection is a few hundred bytes for nobody."""
        self.sio = sio
        self.keep_tokens = keep_tokens
        self.verifier = verifier
        self.source = source
        self.rights = rights
        self.ledger = ledger
        self.presence = presence
        self.usage = usage
        self.limits = limits
        self.typing = typing
        self.tasks = tasks  # the `error` events of refused events without an ack
        self.identities: dict[str, Identity] = {}
        # the token each session proved itself with: open-webui's API is asked with it
        # (never logged, gone with the session)
        self.tokens: dict[str, str] = {}
        # the newest token of each user, kept after their sessions end (bounded): a note's
        # content debounced after its editor left is still written with it. Oldest first:
        # a plain dict keeps that order without OrderedDict's links (a user's entry is
        # there for each connected user)
        self.user_tokens: dict[str, str] = {}
        # sockets accepted without a user yet (open-webui's sign-in page): sid → address
        self.unbound: dict[str, str] = {}
        # events no feature names (direct connections' `{user}:{session}:{request}`)
        self.catch_alls: list[CatchAll] = []
        self.unbound_per_ip, self.unbound_max = unbound_limits
        # connection state recovery (set by the app when [recovery] is on)
        self.recovery: RecoveryService | None = None
        self.events_in: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.disconnect_hooks: list[DisconnectHook] = []
        self.handlers: dict[str, Handler] = {}
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.sio.on("*", self.unknown_event)

    def figures(self) -> Iterator[Figure]:
        yield Figure("rt_sessions", "Authenticated Socket.IO sessions on this node",
                     len(self.identities))
        yield Figure("rt_events_in", "Client events received, by event name", self.events_in,
                     label="event", counter=True)
        yield Figure("rt_errors", "Refused or failed client events and connects, by code",
                     self.errors, label="code", counter=True)

    def add(self, feature: SocketFeature) -> None:
        """A feature's events, and its `disconnected(sid, identity)` if it has one."""
        paced: frozenset[str] = getattr(feature, "paced", frozenset())
        for name, handler in feature.handlers().items():
            self.event(name, handler, paced=name in paced)
        hook = getattr(feature, "disconnected", None)
        if hook is not None:
            self.disconnect_hooks.append(hook)

    # ------------------------------------------------------------------ boundary
    def event(self, name: str, handler: Handler, paced: bool = False) -> None:
        if name in self.handlers:
            raise ValueError(f"event {name!r} has a handler already")
        self.handlers[name] = handler

        async def dispatch(sid: str, *args: Any) -> Any:
            self.events_in[name] = self.events_in.get(name, 0) + 1
            identity = self.identities.get(sid)
            try:
                if not (paced and identity is not None):
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

    def _fail(self, sid: str, name: str, exc: p.EventError) -> dict[str, Any] | None:
        if ack_requested.get():
            self.errors[exc.code] = self.errors.get(exc.code, 0) + 1
            return exc.payload()
        # no ack to answer in: tell the sender with an `error` event
        self.tasks.spawn("error event", self.report(sid, name, exc))
        return None

    async def report(self, sid: str, name: str, exc: p.EventError) -> None:
        """Count a refusal and tell the sender with an `error` event."""
        self.errors[exc.code] = self.errors.get(exc.code, 0) + 1
        await self.sio.emit("error", {"message": str(exc), "error": exc.code, "event": name},
                            to=sid)

    async def unknown_event(self, event: str, sid: str, *args: Any) -> dict | None:
        try:
            self.limits.check_event(sid)  # unknown events cost the sender like known ones
            identity = self.identities.get(sid)
            if identity is not None:
                for catch_all in self.catch_alls:
                    if await catch_all(sid, identity, event, args):
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
        if self.recovery is not None:
            await self.recovery.bound(sid, identity, environ, ip)
        if not self._alive(sid):  # gone during the presence write
            await self.on_disconnect(sid, "transport close")
            raise Refused("gone")
        log.debug("connect %s user %s via %s", sid, identity.id, environ.get("rt.transport"))

    def _remember_token(self, sid: str, user_id: str, token: str) -> None:
        if not self.keep_tokens:
            return
        self.tokens[sid] = token
        self.user_tokens.pop(user_id, None)  # to the end: the newest
        self.user_tokens[user_id] = token
        while len(self.user_tokens) > MAX_USER_TOKENS:
            del self.user_tokens[next(iter(self.user_tokens))]

    def token_for(self, user_id: str) -> str | None:
        """The newest token a session of this user proved itself with."""
        return self.user_tokens.get(user_id)

    async def _bind(self, sid: str, identity: Identity, token: str) -> None:
        self.identities[sid] = identity
        self._remember_token(sid, identity.id, token)
        await self.sio.enter_room(sid, rooms.user(identity.id))
        await self.presence.connected(sid, identity)
        await self.ledger.bound(sid, identity, token)

    def admits(self, ip: str) -> bool:
        """A recovering CONNECT counts against the connect rate like any other."""
        try:
            self.limits.check_connect(ip)
        except p.RateLimited:
            return False
        return True

    async def rebind(self, sid: str, identity: Identity, token: Any, ip: str) -> None:
        """A recovered session (rt/recovery): bound again, silently (no join announced)."""
        self.limits.connected(sid, ip)
        await self._bind(sid, identity, token)

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
        assert isinstance(token, str)  # identify() accepted it
        await self._bind(sid, identity, token)
        return await self.handlers["user-join"](sid, identity, data)

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
        # a recoverable session's leave waits for its recovery window (rt/recovery): the
        # features announce nothing now; one that recovered elsewhere announces nothing
        fate = "ended" if self.recovery is None else await self.recovery.disconnected(
            sid, reason)
        if fate != "superseded":  # else its presence entry is the recovered session's
            await self.presence.disconnected(sid)
        await self.usage.drop(sid)
        if fate != "ended":
            return
        await self.leave(sid, identity)

    async def leave(self, sid: str, identity: Identity) -> None:
        """A session ended for good: open-webui's pool and the features are told."""
        await self.ledger.gone(sid)
        # features still see the session's rooms: python-socketio empties them afterwards
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

    async def enter_rooms(self, sid: str, wanted: list[str]) -> None:
        """Enter rooms within the per-connection room limit (all or none)."""
        current = set(self.sio.rooms(sid))
        new = [room for room in dict.fromkeys(wanted) if room not in current]
        self.limits.check_rooms(len(current), len(new))
        for room in new:
            await self.sio.enter_room(sid, room)

    def members(self, room: str) -> list[str]:
        """This node's sessions in a room."""
        return list(self.sio.manager.rooms.get("/", {}).get(room, {}))
