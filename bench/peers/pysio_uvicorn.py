"""Benchmark peer: stock python-socketio 5.18.1 as an ASGI app under uvicorn (open-webui's
stack: `socketio.AsyncServer(async_mode="asgi")` + `socketio.ASGIApp`, uvicorn with its
defaults: uvloop, httptools, websockets), with the appliance's semantics for the events and
HTTP calls the benchmark uses. Same semantics as bench/peers/node_server.mjs.

    WEBUI_SECRET_KEY=... RT_API_KEY=... .venv/bin/python bench/peers/pysio_uvicorn.py --port 0

Prints "listening on http://HOST:PORT/ws/socket.io" once bound. Exits on SIGTERM/SIGINT.
Needs bench/requirements.txt installed (uvicorn is not an appliance dependency).
"""
from __future__ import annotations

import argparse
import hmac
import json
import os
import socket
import sys
from urllib.parse import unquote

import jwt
import socketio
import uvicorn

SECRET = os.environ.get("WEBUI_SECRET_KEY", "")
API_KEY = os.environ.get("RT_API_KEY", "")
LEEWAY_S = 30

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")

USERS: dict[str, dict] = {}
CHANNELS: dict[str, set[str]] = {}
USER_CHANNELS: dict[str, set[str]] = {}
SESSIONS: dict[str, dict] = {}  # sid -> user, like open-webui's SESSION_POOL


@sio.event
async def connect(sid, environ, auth=None):
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise socketio.exceptions.ConnectionRefusedError("token_missing")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], leeway=LEEWAY_S,
                            options={"require": ["id"], "verify_aud": False})
    except jwt.ExpiredSignatureError:
        raise socketio.exceptions.ConnectionRefusedError("token_expired") from None
    except jwt.InvalidTokenError:
        raise socketio.exceptions.ConnectionRefusedError("token_invalid") from None
    user = USERS.get(claims["id"])
    if user is None:
        raise socketio.exceptions.ConnectionRefusedError("user_unknown")
    SESSIONS[sid] = user
    await sio.enter_room(sid, f"user:{user['id']}")


@sio.event
async def disconnect(sid, reason=None):
    SESSIONS.pop(sid, None)


@sio.on("user-join")
async def user_join(sid, data=None):
    user = SESSIONS[sid]
    for cid in USER_CHANNELS.get(user["id"], ()):
        await sio.enter_room(sid, f"channel:{cid}")
    return {"id": user["id"], "name": user["name"]}


@sio.on("heartbeat")
async def heartbeat(sid, data=None):
    return None  # an ack, when asked for, carries no arguments


@sio.on("echo")
async def echo(sid, *args):
    return args


@sio.on("events:channel")
async def channel_event(sid, data=None):
    user = SESSIONS.get(sid)
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        return {"error": "bad_request"}
    cid = data.get("channel_id")
    inner = data["data"]
    room = f"channel:{cid}"
    if not isinstance(cid, str) or room not in sio.rooms(sid) or user is None:
        return {"error": "forbidden"}
    if inner.get("type") == "typing":
        await sio.emit("events:channel", {
            "channel_id": cid, "message_id": data.get("message_id"),
            "data": {"type": "typing", "data": inner.get("data")},
            "user": {"id": user["id"], "name": user["name"]},
        }, room=room)
    return None


async def api(scope, receive, send):
    """The few /api/v1 calls the benchmark makes (open-webui has FastAPI here; a bare ASGI
    callable costs less, which can only favour this peer)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break

    async def reply(code: int, payload) -> None:
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    path, method = scope["path"], scope["method"]
    if path == "/healthz":
        return await reply(200, {"ok": True})
    if not path.startswith("/api/v1/"):
        return await reply(404, {"error": "not_found"})
    auth = dict(scope["headers"]).get(b"authorization", b"")
    if not hmac.compare_digest(auth, b"Bearer " + API_KEY.encode()):
        return await reply(401, {"error": "unauthorized"})
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        return await reply(400, {"error": "bad_request"})
    parts = [unquote(p) for p in path.split("/")[3:]]
    if method == "PUT" and len(parts) == 2 and parts[0] == "users":
        USERS[parts[1]] = user = {"id": parts[1], "name": str((payload or {}).get("name") or parts[1])}
        return await reply(200, user)
    if method == "PUT" and len(parts) == 2 and parts[0] == "channels":
        cid, members = parts[1], set((payload or {}).get("members") or ())
        CHANNELS[cid] = members
        for uid in members:
            USER_CHANNELS.setdefault(uid, set()).add(cid)
        # live sessions of the members enter the room at once
        for sid, user in list(SESSIONS.items()):
            if user["id"] in members:
                await sio.enter_room(sid, f"channel:{cid}")
        return await reply(200, {"channel_id": cid, "members": sorted(members)})
    if method == "POST" and parts == ["emit"]:
        if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
            return await reply(400, {"error": "bad_request"})
        to = payload.get("to") or {}
        targets = ([f"user:{u}" for u in to.get("users", ())] + list(to.get("rooms", ()))
                   + list(to.get("sids", ())))
        if to.get("all"):
            await sio.emit(payload["event"], payload.get("data"))
        elif targets:
            await sio.emit(payload["event"], payload.get("data"), to=targets)
        return await reply(202, {"ok": True})
    return await reply(404, {"error": "not_found"})


app = socketio.ASGIApp(sio, other_asgi_app=api, socketio_path="/ws/socket.io")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-deflate", action="store_true",
                        help="refuse permessage-deflate (uvicorn negotiates it by default)")
    parser.add_argument("--redis", metavar="URL",
                        help="python-socketio's AsyncRedisManager on this Redis, channel "
                             "`socketio` (open-webui's socket server with "
                             "WEBSOCKET_REDIS_ROOM_CHANNELS=false; bench/pubsub.py)")
    args = parser.parse_args()
    if not SECRET or not API_KEY:
        sys.exit("pysio_uvicorn: WEBUI_SECRET_KEY and RT_API_KEY are required")
    if args.redis:  # (before the first connection, which initializes the manager)
        sio.manager = socketio.AsyncRedisManager(args.redis)
        sio.manager.set_server(sio)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    # open-webui's defaults otherwise (loop/http/ws "auto" = uvloop, httptools, websockets);
    # logs at warning so that neither peer nor appliance pays for per-request log lines.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            ws_per_message_deflate=not args.no_deflate)
    server = uvicorn.Server(config)
    print(f"listening on http://{args.host}:{port}/ws/socket.io", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
