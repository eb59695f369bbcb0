"""open-webui 0.12's own socket server, unmodified, for the interoperability tests.

Run with the Python of an open-webui installation (tests/e2e/install_openwebui.sh), never
imported by the appliance's tests. The caller sets open-webui's environment (DATA_DIR,
WEBUI_SECRET_KEY, WEBSOCKET_MANAGER=redis, WEBSOCKET_REDIS_URL, REDIS_KEY_PREFIX, ...).
It creates two users and a DM between them in open-webui's own database, writes
`{"users": {name: id}, "tokens": {name: jwt}, "channel": id}` to SEED (a file: open-webui
prints its own lines on stdout), then serves `open_webui.socket.main.app` (its Socket.IO
server, whose `encryption:*` handlers are open-webui's `Relay`) on 127.0.0.1:PORT until
killed.

    python openwebui_socket_server.py PORT SEED
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys


def frontend_dir() -> str:
    # open-webui refuses to start without its static assets; the wheel ships them here
    spec = importlib.util.find_spec("open_webui")
    return os.path.join(list(spec.submodule_search_locations)[0], "frontend")


async def seed() -> dict:
    from open_webui.models.auths import Auths
    from open_webui.models.channels import Channels, CreateChannelForm
    from open_webui.utils.auth import create_token

    users = {}
    for name in ("ann", "bob"):
        users[name] = await Auths.insert_new_auth(f"{name}@example.com", "unused",
                                                  name.title(), role="user")
    channel = await Channels.insert_new_channel(
        CreateChannelForm(type="dm", name="", user_ids=[users["bob"].id]), users["ann"].id)
    tokens = {}
    for name, user in users.items():
        auth = await Auths.get_auth_by_id(user.id)
        tokens[name] = create_token({"id": user.id, "typ": "session",
                                     "session_stamp": auth.session_stamp})
    return {"users": {n: u.id for n, u in users.items()}, "tokens": tokens,
            "channel": channel.id}


async def main(port: int, seed_path: str) -> None:
    import uvicorn
    from open_webui.socket.main import app

    with open(seed_path + ".tmp", "w") as fh:
        json.dump(await seed(), fh)
    os.replace(seed_path + ".tmp", seed_path)  # whole or absent for the reader
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    await server.serve()


if __name__ == "__main__":
    os.environ.setdefault("FRONTEND_BUILD_DIR", frontend_dir())
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
