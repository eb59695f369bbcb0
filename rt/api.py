"""HTTP API for backends (/api/v1), and the health endpoints.

Handlers parse and validate, then call a service; they never touch Socket.IO internals.
Every error is JSON `{"error": code, "message": ...}` with the matching status.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
import tornado.web

from . import payloads as p
from .auth import api_key_matches
from .backends import Note, Store, User
from .core.errors import StoreError, delivery_required
from .directory import ROLES, Directory
from .emitter import CallTimeout, Emitter
from .presence.service import PresenceService
from .usage.service import UsageService

log = logging.getLogger("rt.api")

MAX_BATCH = 1000
STATUS_OF = {"bad_request": 400, "forbidden": 403, "not_found": 404, "too_large": 413,
             "rate_limited": 429, "internal": 500, "unauthorized": 401, "timeout": 504,
             "unavailable": 503}


@dataclass
class ApiContext:
    """What the API handlers may use; built once by the composition root."""

    store: Store
    emitter: Emitter
    directory: Directory
    presence: PresenceService
    usage: UsageService
    api_key: Callable[[], str]  # read per request: the key can change on reload
    call_timeout_max: Callable[[], float]
    ready: Callable[[], Any]  # coroutine function raising when not ready
    has_session: Callable[[str], Any]  # coroutine function: is this sid connected anywhere
    observe: Callable[[str, int], None] = lambda handler, code: None  # request metrics
    # (client address, body size) → None, or the error code refusing the request
    check_api: Callable[[str, int], str | None] = lambda ip, size: None


# what a family of handlers is given by its routes (ApiContext here, RelayContext, ...)
CtxT = TypeVar("CtxT")


class ContextHandler(tornado.web.RequestHandler, Generic[CtxT]):
    """A JSON handler given one context object by its routes (`{"ctx": ...}`)."""

    ctx: CtxT

    def initialize(self, ctx: CtxT) -> None:
        self.ctx = ctx

    def client_ip(self) -> str:
        """The caller's address (after trusted proxy headers); tornado's HTTP server always
        sets it."""
        ip = self.request.remote_ip
        if ip is None:
            raise RuntimeError("the request has no client address (not from an HTTP server)")
        return ip

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")

    def on_finish(self) -> None:
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            ctx.observe(type(self).__name__, self.get_status())

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(orjson.dumps(body))

    def fail(self, code: str, message: str, status: int | None = None) -> None:
        self.reply({"error": code, "message": message}, status or STATUS_OF.get(code, 400))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, p.EventError):
            self.fail(exc.code, str(exc))
        elif isinstance(exc, StoreError):
            self.fail("unavailable", f"store unavailable: {exc}", 503)
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            self.fail("bad_request" if status_code != 404 else "not_found",
                      exc.log_message or self._reason, status_code)
        else:
            self.fail("internal", "internal error", 500)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, (p.EventError, tornado.web.HTTPError)):
            return  # answered with a clear error; nothing to investigate
        if isinstance(value, StoreError):
            log.warning("%s %s: %s", self.request.method, self.request.path, value)
            return
        super().log_exception(typ, value, tb)

    def json_body(self) -> Any:
        if not self.request.body:
            raise p.BadRequest("a JSON body is required")
        try:
            return orjson.loads(self.request.body)
        except orjson.JSONDecodeError as exc:
            raise p.BadRequest(f"body is not valid JSON: {exc}") from None


class BaseHandler(ContextHandler[ApiContext]):
    """The handlers of this module: their context is the ApiContext."""


class ApiHandler(BaseHandler):
    """Everything under /api/v1: the API key is required."""

    def prepare(self) -> None:
        if not api_key_matches(self.ctx.api_key(), self.request.headers.get("Authorization")):
            self.fail("unauthorized", "missing or wrong API key", 401)
            return
        refused = self.ctx.check_api(self.client_ip(), len(self.request.body or b""))
        if refused == "too_large":
            self.fail("too_large", "request body is over [limits] api_max_body_bytes", 413)
        elif refused:
            self.fail(refused, "too many API requests from this address", 429)


# ---------------------------------------------------------------------- events
def parse_emit(body: Any) -> dict:
    body = p.obj(body, "emit")
    event = p.text(body, "event", max_len=256, required=True)
    if not event:
        raise p.BadRequest("'event' must not be empty")
    to = p.obj(body.get("to"), "'to'")
    everyone = to.get("all", False)
    if not isinstance(everyone, bool):
        raise p.BadRequest("'to.all' must be a boolean")
    target = {
        "users": p.id_list(to, "users", required=False),
        "rooms_": p.id_list(to, "rooms", required=False),
        "sids": p.id_list(to, "sids", required=False),
        "everyone": everyone,
    }
    if not (everyone or target["users"] or target["rooms_"] or target["sids"]):
        raise p.BadRequest("'to' names no recipient (users, rooms, sids or all)")
    return {"event": event, "data": body.get("data"),
            "skip_sids": p.id_list(body, "skip_sids", required=False), **target}


@contextlib.contextmanager
def delivered_everywhere():
    """Emits in here that cannot reach the other nodes (Redis slow or down) raise
    StoreError, answered 503, rather than being acknowledged with a 202 and lost there."""
    token = delivery_required.set(True)
    try:
        yield
    finally:
        delivery_required.reset(token)


class EmitHandler(ApiHandler):
    async def post(self) -> None:
        emit = parse_emit(self.json_body())
        with delivered_everywhere():
            await self.ctx.emitter.emit(emit.pop("event"), emit.pop("data"), **emit)
        self.reply({"queued": 1}, 202)


class EmitBatchHandler(ApiHandler):
    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, list) or len(body) > MAX_BATCH:
            raise p.BadRequest(f"body must be a list of at most {MAX_BATCH} emits")
        emits = []
        for index, item in enumerate(body):  # all validated before any is sent
            try:
                emits.append(parse_emit(item))
            except p.BadRequest as exc:
                raise p.BadRequest(f"emit #{index}: {exc}") from None
        with delivered_everywhere():
            for index, emit in enumerate(emits):  # in order: each queued before the next
                try:
                    await self.ctx.emitter.emit(emit.pop("event"), emit.pop("data"), **emit)
                except StoreError as exc:
                    raise StoreError(f"emits before #{index} were sent, #{index} {exc}, "
                                     f"the {len(emits) - index - 1} after it were not sent"
                                     ) from exc
        self.reply({"queued": len(emits)}, 202)


class CallHandler(ApiHandler):
    async def post(self) -> None:
        body = p.obj(self.json_body())
        sid = p.ident(body, "sid")
        event = p.text(body, "event", max_len=256, required=True)
        limit = self.ctx.call_timeout_max()
        timeout = body.get("timeout_s", limit)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout:
            raise p.BadRequest("'timeout_s' must be a positive number")
        timeout = min(float(timeout), limit)  # never unbounded
        if not await self.ctx.has_session(sid):
            raise p.NotFound(f"no connected session {sid!r}")
        try:
            ack = await self.ctx.emitter.call(sid, event, body.get("data"), timeout)
        except CallTimeout:
            return self.fail("timeout", f"no answer within {timeout:g} s", 504)
        self.reply({"ack": ack})


# ---------------------------------------------------------------------- rooms, sessions
class RoomMembersHandler(ApiHandler):
    async def post(self, room: str) -> None:
        users = p.id_list(p.obj(self.json_body()), "users")
        sessions = await self.ctx.emitter.enter(users, self._room(room))
        self.reply({"room": room, "sessions": sessions})

    async def delete(self, room: str) -> None:
        users = p.id_list(p.obj(self.json_body()), "users")
        sessions = await self.ctx.emitter.leave(users, self._room(room))
        self.reply({"room": room, "sessions": sessions})

    @staticmethod
    def _room(room: str) -> str:
        if not room or len(room) > p.MAX_ID:
            raise p.BadRequest("bad room name")
        return room


class DisconnectUserHandler(ApiHandler):
    async def post(self, user_id: str) -> None:
        sessions = await self.ctx.emitter.disconnect_users([user_id])
        self.reply({"user_id": user_id, "sessions": sessions})


class PresenceHandler(ApiHandler):
    async def get(self) -> None:
        self.reply({"users": await self.ctx.presence.snapshot()})


class UserPresenceHandler(ApiHandler):
    async def get(self, user_id: str) -> None:
        self.reply(await self.ctx.presence.user_presence(user_id))


class UsageHandler(ApiHandler):
    async def get(self) -> None:
        self.reply({"models": await self.ctx.usage.models()})


# ---------------------------------------------------------------------- directory
def user_json(user: User, last_active_at: float | None) -> dict:
    return {"id": user.id, "name": user.name, "role": user.role, "disabled": user.disabled,
            "last_active_at": last_active_at}


class UserHandler(ApiHandler):
    async def get(self, user_id: str) -> None:
        user = await self.ctx.store.get_user(user_id)
        if user is None:
            raise p.NotFound(f"user {user_id!r} does not exist")
        last = await self.ctx.presence.last_active(user_id, user.last_active_at)
        self.reply(user_json(user, last))

    async def put(self, user_id: str) -> None:
        body = p.obj(self.json_body())
        p.ident({"id": user_id}, "id")
        name = p.text(body, "name", max_len=256, required=True)
        role = body.get("role", "user")
        if role not in ROLES:
            raise p.BadRequest(f"'role' must be one of {', '.join(ROLES)}")
        disabled = body.get("disabled", False)
        if not isinstance(disabled, bool):
            raise p.BadRequest("'disabled' must be a boolean")
        existing = await self.ctx.store.get_user(user_id)
        user = User(user_id, name, role, disabled,
                    existing.last_active_at if existing else None)
        await self.ctx.directory.put_user(user)
        self.reply(user_json(user, user.last_active_at))

    async def delete(self, user_id: str) -> None:
        if not await self.ctx.directory.delete_user(user_id):
            raise p.NotFound(f"user {user_id!r} does not exist")
        self.reply({"deleted": user_id})


class ChannelHandler(ApiHandler):
    async def get(self, channel_id: str) -> None:
        members = await self.ctx.store.get_channel_members(channel_id)
        if members is None:
            raise p.NotFound(f"channel {channel_id!r} does not exist")
        self.reply({"channel_id": channel_id, "members": sorted(members)})

    async def put(self, channel_id: str) -> None:
        p.ident({"id": channel_id}, "id")
        members = p.id_list(p.obj(self.json_body()), "members")
        await self.ctx.directory.put_channel(channel_id, members)
        self.reply({"channel_id": channel_id, "members": sorted(members)})

    async def delete(self, channel_id: str) -> None:
        if not await self.ctx.directory.delete_channel(channel_id):
            raise p.NotFound(f"channel {channel_id!r} does not exist")
        self.reply({"deleted": channel_id})


class ChannelMembersHandler(ApiHandler):
    async def patch(self, channel_id: str) -> None:
        body = p.obj(self.json_body())
        add = p.id_list(body, "add", required=False)
        remove = p.id_list(body, "remove", required=False)
        if not await self.ctx.directory.update_members(channel_id, add, remove):
            raise p.NotFound(f"channel {channel_id!r} does not exist")
        members = await self.ctx.store.get_channel_members(channel_id) or []
        self.reply({"channel_id": channel_id, "members": sorted(members)})


class ChannelMemberHandler(ApiHandler):
    async def get(self, channel_id: str, user_id: str) -> None:
        members = await self.ctx.store.get_channel_members(channel_id)
        if members is None or user_id not in members:
            raise p.NotFound(f"{user_id!r} is not a member of channel {channel_id!r}")
        self.reply({"channel_id": channel_id, "user_id": user_id,
                    "last_read_at": await self.ctx.store.get_channel_read(channel_id, user_id)})


def note_json(note: Note) -> dict:
    return {"id": note.id, "owner": note.owner, "read": sorted(note.read),
            "write": sorted(note.write)}


class NoteHandler(ApiHandler):
    async def get(self, note_id: str) -> None:
        note = await self.ctx.store.get_note(note_id)
        if note is None:
            raise p.NotFound(f"note {note_id!r} does not exist")
        self.reply(note_json(note))

    async def put(self, note_id: str) -> None:
        p.ident({"id": note_id}, "id")
        body = p.obj(self.json_body())
        note = Note(note_id, p.ident(body, "owner"),
                    frozenset(p.id_list(body, "read", required=False)),
                    frozenset(p.id_list(body, "write", required=False)))
        await self.ctx.directory.put_note(note)
        self.reply(note_json(note))

    async def delete(self, note_id: str) -> None:
        if not await self.ctx.directory.delete_note(note_id):
            raise p.NotFound(f"note {note_id!r} does not exist")
        self.reply({"deleted": note_id})


class ChatReadHandler(ApiHandler):
    async def get(self, chat_id: str, user_id: str) -> None:
        self.reply({"chat_id": chat_id, "user_id": user_id,
                    "last_read_at": await self.ctx.store.get_chat_read(chat_id, user_id)})


# ---------------------------------------------------------------------- operations
class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.reply({"status": "ok"})


class ReadyHandler(BaseHandler):
    async def get(self) -> None:
        try:
            await asyncio.wait_for(self.ctx.ready(), timeout=5)
        except Exception as exc:  # any failure means not ready; say which
            reason = str(exc) or type(exc).__name__
            return self.reply({"status": "unavailable", "reason": reason}, 503)
        self.reply({"status": "ready"})


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self.fail("not_found", f"no such endpoint: {self.request.path}", 404)


SEG = r"([^/]+)"


def routes(ctx: ApiContext) -> list[tuple]:
    kw = {"ctx": ctx}
    v1 = "/api/v1"
    return [
        (f"{v1}/emit", EmitHandler, kw),
        (f"{v1}/emit/batch", EmitBatchHandler, kw),
        (f"{v1}/call", CallHandler, kw),
        (f"{v1}/rooms/{SEG}/members", RoomMembersHandler, kw),
        (f"{v1}/users/{SEG}/disconnect", DisconnectUserHandler, kw),
        (f"{v1}/users/{SEG}/presence", UserPresenceHandler, kw),
        (f"{v1}/users/{SEG}", UserHandler, kw),
        (f"{v1}/presence", PresenceHandler, kw),
        (f"{v1}/usage", UsageHandler, kw),
        (f"{v1}/channels/{SEG}/members/{SEG}", ChannelMemberHandler, kw),
        (f"{v1}/channels/{SEG}/members", ChannelMembersHandler, kw),
        (f"{v1}/channels/{SEG}", ChannelHandler, kw),
        (f"{v1}/notes/{SEG}", NoteHandler, kw),
        (f"{v1}/chats/{SEG}/read/{SEG}", ChatReadHandler, kw),
        ("/healthz", HealthHandler, kw),
        ("/readyz", ReadyHandler, kw),
    ]
