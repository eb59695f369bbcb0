"""One encrypted-channel session shared by a browser on the appliance and a browser on
open-webui 0.12.4's own socket server, both relays working on the same Redis state.

The foreign side is open-webui itself, unmodified, in its own Python (the installation of
the end-to-end tier, tests/e2e/install_openwebui.sh): its `Relay` checks its own database
(users, a DM, permissions), takes the channel's lock with redis-py, saves with its Lua
compare-and-set and emits through python-socketio's Redis manager.

Pub/sub: the appliance's relay sends the events of open-webui's participants as
python-socketio `emit` messages on `socketio`, open-webui's channel (encryption_delivery.py).
The other way, open-webui's relay emits to the appliance's sids through its own manager: its
stock manager (`WEBSOCKET_REDIS_ROOM_CHANNELS=false`) publishes on `socketio`, which is the
appliance's cluster channel `<prefix>:socketio` when the prefix is empty, as here, so the
appliance hears it without its pub/sub bridge with open-webui. (With open-webui's default
room-channel manager an emit to one sid goes to `socketio#/#<sid>`, which the appliance
hears through that bridge, `[openwebui] pubsub`.)
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from rt.app import Appliance
from rt.backends.encryption_state import state_key
from rt.backends.factory import build_redis_backend
from rt.backends.redis_conn import RedisTarget
from tests.support.appliance import SECRET, WAIT, Client, Harness, settings_for
from tests.support.encryption import ChannelTable, ask, attach, event
from tests.support.redis_servers import _die_with_parent, require_redis, start_standalone

pytestmark = pytest.mark.asyncio

VERSION = "0.12.4"
SERVER = Path(__file__).with_name("openwebui_socket_server.py")
START_TIMEOUT = 180.0  # first start of an open-webui data dir runs all its migrations
HINT = (f"open-webui {VERSION} is not installed for the end-to-end tier: run "
        "tests/e2e/install_openwebui.sh (or set RT_OPENWEBUI_PYTHON)")


def openwebui_python() -> Path:
    explicit = os.environ.get("RT_OPENWEBUI_PYTHON")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("RT_E2E_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rt-appliance", "e2e")
    venv = Path(cache) / f"open-webui-{VERSION}"
    if not (venv / ".installed").exists():
        if os.environ.get("CI") == "true":  # .ci/run installs it first
            pytest.fail(HINT)
        pytest.skip(HINT)
    return venv / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def openwebui(tmp_path: Path, redis_url: str):
    """open-webui's socket server on its own database and the shared Redis."""
    python = openwebui_python()
    data = tmp_path / "openwebui"
    data.mkdir(parents=True)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(data),
        "DATA_DIR": str(data), "STATIC_DIR": str(data / "static"), "ENV": "dev",
        "USE_SLIM_DOCKER": "true", "WEBUI_SECRET_KEY": SECRET,
        "WEBSOCKET_MANAGER": "redis", "WEBSOCKET_REDIS_URL": redis_url, "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": "", "WEBSOCKET_REDIS_ROOM_CHANNELS": "false",
        "ENABLE_CHANNELS": "true", "ENABLE_ENCRYPTED_CHANNELS": "true",
        "USER_PERMISSIONS_FEATURES_ENCRYPTED_CHANNELS": "true",
    }
    seed = data / "seed.json"
    with open(data / "server.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(python), str(SERVER), str(port), str(seed), env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while not seed.exists():
            assert proc.returncode is None, f"open-webui exited; see {data / 'server.log'}"
            assert asyncio.get_running_loop().time() < deadline, (
                f"open-webui did not start within {START_TIMEOUT} s; see {data / 'server.log'}")
            await asyncio.sleep(0.2)
        seeded = json.loads(seed.read_text())
        seeded["url"] = f"http://127.0.0.1:{port}"
        yield seeded
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def connect_openwebui(url: str, token: str) -> Client:
    """A browser of open-webui's own server: connect, then `user-join` as its layout does."""
    client = Client()
    for _ in range(int(WAIT * 10)):  # the server listens a moment after printing
        try:
            await client.connect(url, socketio_path="/ws/socket.io", transports=["websocket"],
                                 auth={"token": token}, wait_timeout=WAIT)
            break
        except Exception:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"could not connect to open-webui at {url}")
    joined = await client.call("user-join", {"auth": {"token": token}}, timeout=WAIT)
    assert joined and joined["name"] == "Bob", joined
    return client


def blob(size: int = 64) -> str:
    return base64.b64encode(os.urandom(size)).decode()


async def test_one_session_across_the_appliance_and_open_webui(tmp_path: Path) -> None:
    require_redis()
    topo = start_standalone(tmp_path / "redis")
    raw = aioredis.Redis.from_url(topo.url)
    target = RedisTarget(url=topo.url, key_prefix="")
    # as open-webui here (WEBSOCKET_REDIS_ROOM_CHANNELS=false): the appliance's room emits
    # are mirrored on the one channel open-webui's manager reads
    settings = settings_for(tmp_path / "appliance",
                            "[log]\nlevel = warning\n[openwebui]\nroom_channels = false\n")
    app = Appliance(settings, backend=build_redis_backend(settings, target))
    h = bob = None
    try:
        async with openwebui(tmp_path, topo.url) as ow:
            ids, channel = ow["users"], ow["channel"]
            await app.start()
            h = Harness(app)
            # events for open-webui's sids are published where its manager listens (in
            # production through the appliance's pub/sub bridge with open-webui)
            relay = attach(app, ChannelTable({channel: {ids["ann"], ids["bob"]}}),
                           publish=lambda payload: raw.publish("socketio", payload),
                           host_id="rt-appliance-test")
            ann = await h.connect(await h.user(ids["ann"], "Ann"))
            bob = await connect_openwebui(ow["url"], ow["tokens"]["bob"])

            # ann starts on the appliance; open-webui's relay sees the session
            started = await ask(ann, "start", {"channel": channel, "action": "start"})
            session, host = started["session"], started["participation"]
            await ask(ann, "bind", {"channel": channel, "session": session,
                                    "participation": host, "key": blob(32)})
            # the appliance's invitation reaches open-webui's browser in the channel room
            assert await bob.rec.wait_for("encryption:available") == {
                "channel": channel, "session": session}
            assert await ask(bob, "status", {"channel": channel}) == {
                "ok": True, "available": True, "session": session}

            # bob joins through open-webui: its Relay adds him to the appliance's state
            joined = await ask(bob, "join", {"channel": channel, "action": "join",
                                             "session": session})
            assert joined["ok"] is True, joined
            guest = joined["participation"]
            assert joined["host"] == host and [p["user"] for p in joined["participants"]] == [
                ids["ann"], ids["bob"]]
            state = json.loads(await raw.get(state_key("", channel)))
            assert state["members"][guest]["sid"] == bob.get_sid()
            assert state["members"][host]["sid"] == ann.get_sid()

            # open-webui delivers the candidate to the appliance's browser
            key_package = blob(300)
            assert (await ask(bob, "bind", {"channel": channel, "session": session,
                                            "participation": guest, "key": blob(32),
                                            "packet": key_package}))["ok"] is True
            candidate = await event(ann, lambda e: e["kind"] == "candidate")
            assert (candidate["sender"], candidate["packet"], candidate["sequence"]) == (
                guest, key_package, 1)

            # the appliance admits; the welcome reaches open-webui's browser
            welcome = blob(500)
            assert (await ask(ann, "packet", {"channel": channel, "session": session,
                                              "participation": host, "kind": "admit",
                                              "target": guest, "packet": blob(),
                                              "welcome": welcome}))["ok"] is True
            got = await event(bob, lambda e: e["kind"] == "welcome")
            assert (got["sender"], got["packet"], got["sequence"]) == (host, welcome, 1)

            # MLS both ways, the sequences continuing across both relays
            to_ann, to_bob = blob(1000), blob(2000)
            assert (await ask(bob, "packet", {"channel": channel, "session": session,
                                              "participation": guest, "kind": "mls",
                                              "packet": to_ann}))["ok"] is True
            got = await event(ann, lambda e: e["kind"] == "mls")
            assert (got["sender"], got["packet"], got["sequence"]) == (guest, to_ann, 2)
            assert (await ask(ann, "packet", {"channel": channel, "session": session,
                                              "participation": host, "kind": "mls",
                                              "packet": to_bob}))["ok"] is True
            got = await event(bob, lambda e: e["kind"] == "mls")
            assert (got["sender"], got["packet"], got["sequence"]) == (host, to_bob, 2)

            # open-webui counted bob's requests in the buckets the appliance reads
            bucket = await raw.hgetall(state_key("", f"rate:{ids['bob']}:admission"))
            assert int(bucket[b"count"]) == 1

            # bob leaves through open-webui; ann hears it from the appliance's browser side
            assert await ask(bob, "leave", {"channel": channel, "session": session,
                                            "participation": guest}) == {"ok": True}
            departed = await event(ann, lambda e: e["kind"] == "departed")
            assert (departed["participation"], departed["sequence"]) == (guest, 3)

            # bob comes back; the host leaving on the appliance ends it for him on open-webui
            again = await ask(bob, "join", {"channel": channel, "action": "join",
                                            "session": session})
            assert again["ok"] is True, again
            assert await ask(ann, "leave", {"channel": channel, "session": session,
                                            "participation": host}) == {"ok": True}
            ended = await event(bob, lambda e: e["kind"] == "ended")
            assert ended == {"kind": "ended", "channel": channel, "session": session}
            assert await raw.get(state_key("", channel)) is None
            assert await ask(bob, "status", {"channel": channel}) == {
                "ok": True, "available": False, "session": None}
            # the appliance sent bob's events (welcome, mls, ended) as python-socketio
            # messages, ann's through its own client manager
            assert relay.delivery.counts["openwebui"] == 3
            assert relay.delivery.counts["appliance"] >= 1
            await bob.disconnect()
    finally:
        if bob is not None and bob.connected:
            await bob.disconnect()
        if h is not None:
            await app.stop()
            await h.close()
        await raw.aclose()
        topo.stop()
