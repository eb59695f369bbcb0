"""A stand-in for open-webui's HTTP API and socket server, for the identity-source tests.

It answers the calls the appliance makes with a tab's token (`/api/v1/auths/`, channels,
notes, chats, note updates) from tables the test edits, and runs a real python-socketio
server at `/ws/socket.io` that records the events the appliance sends there as a browser
would (read markers). `down = True` makes every call answer 503, like an open-webui that is
restarting; `requests` counts the calls per path.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
import socketio
import tornado.httpserver
import tornado.netutil
import tornado.web

from tests.support.appliance import SECRET


@dataclass
class StandinUser:
    id: str
    name: str
    role: str = "user"
    channels: list[str] = field(default_factory=list)
    channels_allowed: bool = True


@dataclass
class StandinOpenWebui:
    users: dict[str, StandinUser] = field(default_factory=dict)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)   # note → user → read|write
    chats: dict[str, dict[str, str]] = field(default_factory=dict)   # chat → user → read|write
    note_updates: list[tuple[str, str, dict]] = field(default_factory=list)  # (note, user, data)
    socket_events: list[tuple[str, str, Any]] = field(default_factory=list)  # (user, event, data)
    requests: Counter = field(default_factory=Counter)
    down: bool = False
    port: int = 0
    sio: Any = None  # its python-socketio server, once serving

    def add(self, user_id: str, name: str | None = None, role: str = "user",
            channels: list[str] | None = None) -> StandinUser:
        user = StandinUser(user_id, name or user_id.title(), role, list(channels or []))
        self.users[user_id] = user
        return user

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def who(self, authorization: str | None) -> StandinUser | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        try:
            claims = jwt.decode(authorization[7:], SECRET, algorithms=["HS256"],
                                options={"verify_exp": False})
        except jwt.InvalidTokenError:
            return None
        return self.users.get(claims.get("id"))


class _Handler(tornado.web.RequestHandler):
    def initialize(self, standin: StandinOpenWebui) -> None:
        self.standin = standin

    def prepare(self) -> None:
        self.standin.requests[self.request.path] += 1
        if self.standin.down:
            self.send_error(503)
            return
        self.user = self.standin.who(self.request.headers.get("Authorization"))
        if self.user is None:
            self.answer(401, {"detail": "Invalid token"})

    def answer(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))


class Auths(_Handler):
    def get(self) -> None:
        u = self.user
        self.answer(200, {"id": u.id, "name": u.name, "role": u.role, "email": f"{u.id}@x",
                          "token": "secret", "permissions": {}, "profile_image_url": "/img"})


class Channels(_Handler):
    def get(self) -> None:
        if not self.user.channels_allowed:
            self.answer(403, {"detail": "no channels"})
            return
        self.answer(200, [{"id": c, "name": c} for c in self.user.channels])


class Note(_Handler):
    def get(self, note_id: str) -> None:
        access = self.standin.notes.get(note_id)
        if access is None:
            self.answer(404, {"detail": "not found"})
        elif self.user.id not in access:
            self.answer(403, {"detail": "forbidden"})
        else:
            self.answer(200, {"id": note_id, "write_access": access[self.user.id] == "write"})


class NoteUpdate(_Handler):
    async def post(self, note_id: str) -> None:
        if self.standin.notes.get(note_id, {}).get(self.user.id) != "write":
            self.answer(403, {"detail": "forbidden"})
            return
        data = orjson.loads(self.request.body)["data"]
        self.standin.note_updates.append((note_id, self.user.id, data))
        if self.standin.sio is not None:
            # as open-webui's router does: the saved keys go to the note's room
            await self.standin.sio.emit("events:note", {"id": note_id, "data": data},
                                        to=f"note:{note_id}")
        self.answer(200, {"id": note_id})


class Chat(_Handler):
    def get(self, chat_id: str) -> None:
        access = self.standin.chats.get(chat_id, {}).get(self.user.id)
        if access is None:
            self.answer(401, {"detail": "not found"})
            return
        self.answer(200, {"id": chat_id, "chat": {
            "share_mode": "continue" if access == "write" else None}})


@contextlib.asynccontextmanager
async def serve_standin(standin: StandinOpenWebui | None = None, redis_url: str | None = None):
    """With `redis_url`, its socket server sits on Redis as open-webui's does
    (`WEBSOCKET_MANAGER=redis` with the stock manager): its sockets enter `user:{id}`."""
    standin = standin or StandinOpenWebui()
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    sio = socketio.AsyncServer(async_mode="tornado", client_manager=manager)

    @sio.event
    async def connect(sid, environ, auth):
        user = standin.who(f"Bearer {(auth or {}).get('token', '')}")
        if user is None:
            return False
        await sio.save_session(sid, {"user": user.id})
        await sio.enter_room(sid, f"user:{user.id}")

    @sio.on("*")
    async def any_event(event, sid, data=None):
        session = await sio.get_session(sid)
        standin.socket_events.append((session["user"], event, data))
        return None

    args = {"standin": standin}
    app = tornado.web.Application([
        (r"/api/v1/auths/", Auths, args),
        (r"/api/v1/channels/", Channels, args),
        (r"/api/v1/notes/([^/]+)", Note, args),
        (r"/api/v1/notes/([^/]+)/update", NoteUpdate, args),
        (r"/api/v1/chats/([^/]+)", Chat, args),
        (r"/ws/socket.io/", socketio.get_tornado_handler(sio)),
    ])
    server = tornado.httpserver.HTTPServer(app)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    standin.port = sockets[0].getsockname()[1]
    standin.sio = sio
    try:
        yield standin
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)
        if manager is not None:
            task = getattr(manager, "thread", None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await manager.redis.aclose()
