"""Identities and rights from open-webui (`[openwebui] url`), against a stand-in of its API.

The stand-in answers with tables the test edits (tests/support/openwebui_standin.py); the
appliance, its clients and Redis are real.
"""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.support.appliance import WAIT, running
from tests.support.openwebui_standin import StandinOpenWebui, serve_standin
from tests.support.redis_servers import redis_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

INI = "[openwebui]\ncache_ttl = 0.3\nreverify_interval = 0.3\n"


def env_for(standin: StandinOpenWebui, redis=None, prefix: str | None = None) -> dict:
    env = {"OPENWEBUI_URL": standin.url}
    if redis is not None:
        env |= {"WEBSOCKET_MANAGER": "redis", "WEBSOCKET_REDIS_URL": redis.url,
                "REDIS_KEY_PREFIX": prefix or f"t{uuid.uuid4().hex[:8]}"}
    return env


def session_token(h, user_id: str, **extra) -> str:
    """A token shaped like open-webui's login token (typ, jti, iat; no name or role)."""
    claims = {"typ": "session", "jti": str(uuid.uuid4()), "iat": int(time.time()),
              "session_stamp": "s1", **extra}
    return h.token(user_id, **claims)


async def until(check, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def test_identity_comes_from_open_webui(tmp_path):
    async with serve_standin() as ow:
        ow.add("u1", "Una", "admin", channels=["c1", "c2"])
        async with running(tmp_path, INI, env_for(ow)) as h:
            token = session_token(h, "u1")
            client = await h.connect(token)
            sid = client.get_sid()
            assert h.app.gateway.identities[sid].name == "Una"
            assert h.app.gateway.identities[sid].role == "admin"
            assert await client.call("user-join", {"auth": {"token": token}}, timeout=WAIT) == {
                "id": "u1", "name": "Una"}
            assert {"user:u1", "channel:c1", "channel:c2"} <= set(h.app.sio.rooms(sid))
            # a token open-webui does not know, a non-browser token type, a user pending
            assert await h.refused(session_token(h, "ghost")) == "token_invalid"
            ow.add("bot")
            assert await h.refused(session_token(h, "bot", typ="automation")) == "token_invalid"
            ow.add("newbie", role="pending")
            assert await h.refused(session_token(h, "newbie")) == "user_pending"


async def test_a_burst_of_tabs_asks_open_webui_once(tmp_path):
    async with serve_standin() as ow:
        ow.add("u1")
        async with running(tmp_path, "[openwebui]\ncache_ttl = 30\n", env_for(ow)) as h:
            token = session_token(h, "u1")
            clients = await asyncio.gather(*(h.connect(token) for _ in range(40)))
            assert all(c.connected for c in clients)
            assert ow.requests["/api/v1/auths/"] == 1
            # the identity source itself, 1000 callers at once: one request
            source = h.app.gateway.source
            other = session_token(h, "u1")
            found = await asyncio.gather(*(source.identify(other) for _ in range(1000)))
            assert {i.id for i in found} == {"u1"}
            assert ow.requests["/api/v1/auths/"] == 2


async def test_cache_is_bounded(tmp_path):
    async with serve_standin() as ow:
        for i in range(10):
            ow.add(f"u{i}")
        ini = "[openwebui]\ncache_ttl = 30\ncache_size = 4\n"
        async with running(tmp_path, ini, env_for(ow)) as h:
            for i in range(10):
                await h.app.gateway.source.identify(session_token(h, f"u{i}"))
            assert len(h.app.openwebui.cache) == 4
            assert ow.requests["/api/v1/auths/"] == 10


async def test_open_webui_down_refuses_new_sockets_and_keeps_live_ones(tmp_path):
    async with serve_standin() as ow:
        ow.add("u1")
        async with running(tmp_path, INI, env_for(ow)) as h:
            live = await h.connect(session_token(h, "u1"))
            ow.down = True
            assert await h.refused(session_token(h, "u1")) == "unavailable"
            before = ow.requests["/api/v1/auths/"]
            await until(lambda: ow.requests["/api/v1/auths/"] > before + 2,
                        "re-verification ran while open-webui was down")
            assert live.connected
            ow.down = False
            again = await h.connect(session_token(h, "u1"))
            assert again.connected and live.connected


async def test_role_change_ends_the_socket(tmp_path):
    async with serve_standin() as ow:
        user = ow.add("u1", role="admin")
        async with running(tmp_path, INI, env_for(ow)) as h:
            client = await h.connect(session_token(h, "u1"))
            user.role = "user"
            await until(lambda: not client.connected, "socket ended after the role change")
            fresh = await h.connect(session_token(h, "u1"))
            assert h.app.gateway.identities[fresh.get_sid()].role == "user"


async def test_revoked_token_loses_its_socket(tmp_path, redis_server):  # noqa: F811
    async with serve_standin() as ow:
        ow.add("u1")
        env = env_for(ow, redis_server)
        async with running(tmp_path, INI, env) as h:
            prefix = env["REDIS_KEY_PREFIX"]
            jti = str(uuid.uuid4())
            token = h.token("u1", typ="session", jti=jti, iat=int(time.time()) - 10)
            kept = await h.connect(session_token(h, "u1"))
            client = await h.connect(token)
            r = redis_server.processes[0].client()
            r.set(f"{prefix}:auth:token:{jti}:revoked", "1")  # what open-webui's signout writes
            await until(lambda: not client.connected, "signed-out socket ended")
            assert kept.connected
            assert await h.refused(token) == "token_revoked"
            # a password change revokes every token issued before it
            r.set(f"{prefix}:auth:user:u1:revoked_at", int(time.time()) + 1)
            await until(lambda: not kept.connected, "sockets of the revoked user ended")


async def test_lost_access_to_a_channel_or_note_while_connected(tmp_path):
    async with serve_standin() as ow:
        user = ow.add("u1", channels=["c1"])
        ow.notes["n1"] = {"u1": "read"}
        async with running(tmp_path, INI, env_for(ow)) as h:
            token = session_token(h, "u1")
            client = await h.connect(token)
            sid = client.get_sid()
            await client.call("user-join", {"auth": {"token": token}}, timeout=WAIT)
            assert await client.call("join-note", {"note_id": "n1"}, timeout=WAIT) == {"ok": True}
            user.channels = []
            del ow.notes["n1"]["u1"]
            await asyncio.sleep(0.4)  # past cache_ttl: open-webui is asked again
            assert await client.call("join-channels", {"auth": {"token": token}},
                                     timeout=WAIT) == {"channels": []}
            assert "channel:c1" not in h.app.sio.rooms(sid)
            ack = await client.call("join-note", {"note_id": "n1"}, timeout=WAIT)
            assert ack["error"] == "forbidden"
            ack = await client.call("join-note", {"note_id": "nope"}, timeout=WAIT)
            assert ack["error"] == "not_found"
            # no channels permission: member of none, as open-webui
            user.channels, user.channels_allowed = ["c1"], False
            await asyncio.sleep(0.4)
            assert await client.call("join-channels", {}, timeout=WAIT) == {"channels": []}


async def test_unbound_socket_binds_on_user_join(tmp_path):
    async with serve_standin() as ow:
        ow.add("u1", channels=["c1"])
        async with running(tmp_path, INI + "unbound_per_ip = 2\n", env_for(ow)) as h:
            client = await h.connect(None)  # the sign-in page: no token yet
            sid = client.get_sid()
            assert h.app.sio.rooms(sid) == [] or set(h.app.sio.rooms(sid)) <= {sid}
            ack = await client.call("heartbeat", {}, timeout=WAIT)
            assert ack["error"] == "forbidden"
            ack = await client.call("user-join", {"auth": {"token": "nonsense"}}, timeout=WAIT)
            assert ack["error"] == "token_invalid"
            token = session_token(h, "u1")
            assert await client.call("user-join", {"auth": {"token": token}},
                                     timeout=WAIT) == {"id": "u1", "name": "U1"}
            assert {"user:u1", "channel:c1"} <= set(h.app.sio.rooms(sid))
            assert sid not in h.app.gateway.unbound
            # bounded per address: two more unbound are fine, the third is refused
            await h.connect(None)
            await h.connect(None)
            assert await h.refused(None) == "rate_limited"


async def test_shared_chat_join_typing_presence(tmp_path):
    async with serve_standin() as ow:
        ow.add("a", "Ann")
        ow.add("b", "Bob")
        ow.add("c", "Cid")
        ow.chats["chat1"] = {"a": "write", "b": "read"}
        async with running(tmp_path, INI, env_for(ow)) as h:
            a = await h.connect(session_token(h, "a"))
            b = await h.connect(session_token(h, "b"))
            c = await h.connect(session_token(h, "c"))
            join = {"chat_id": "chat1", "data": {"type": "join"}}
            assert await a.call("events:chat", join, timeout=WAIT) is True
            assert await b.call("events:chat", join, timeout=WAIT) is True
            assert await c.call("events:chat", join, timeout=WAIT) is False  # no access
            assert await c.call("events:chat", {"chat_id": "temporary:x", "data": {
                "type": "join"}}, timeout=WAIT) is False
            presence = await a.rec.wait_for("events", lambda e: e["data"]["type"] ==
                                            "chat:presence" and len(e["data"]["data"]["users"]) == 2)
            assert presence["data"]["data"]["users"] == [{"id": "a", "name": "Ann"},
                                                         {"id": "b", "name": "Bob"}]
            typing = {"chat_id": "chat1", "data": {"type": "typing", "data": {"typing": True}}}
            assert await a.call("events:chat", typing, timeout=WAIT) is True
            got = await b.rec.wait_for("events", lambda e: e["data"]["type"] == "typing")
            assert got == {"chat_id": "chat1", "user_id": "a", "user": {"id": "a", "name": "Ann"},
                           "shared": True, "data": {"type": "typing", "data": {"typing": True}}}
            assert await b.call("events:chat", typing, timeout=WAIT) is False  # read only
            assert not [e for e in a.rec.of("events") if e["data"]["type"] == "typing"]
            assert await b.call("events:chat", {"chat_id": "chat1", "data": {"type": "leave"}},
                                timeout=WAIT) is True
            await a.rec.wait_for("events", lambda e: e["data"]["type"] == "chat:presence"
                                 and e["data"]["data"]["users"] == [{"id": "a", "name": "Ann"}])


async def test_read_markers_reach_open_webui_socket_handlers(tmp_path):
    async with serve_standin() as ow:
        ow.add("a", channels=["c1"])
        async with running(tmp_path, INI, env_for(ow)) as h:
            token = session_token(h, "a")
            a = await h.connect(token)
            await a.call("user-join", {"auth": {"token": token}}, timeout=WAIT)
            assert await a.call("events:chat", {"chat_id": "chat9", "data": {
                "type": "last_read_at"}}, timeout=WAIT) is None
            assert await a.call("events:channel", {"channel_id": "c1", "data": {
                "type": "last_read_at"}}, timeout=WAIT) is None
            await until(lambda: len(ow.socket_events) >= 3, "markers sent to open-webui")
            events = {(user, event): data for user, event, data in ow.socket_events}
            assert events[("a", "events:chat")] == {"chat_id": "chat9",
                                                    "data": {"type": "last_read_at"}}
            assert events[("a", "events:channel")] == {"channel_id": "c1",
                                                       "data": {"type": "last_read_at"}}
            assert ("a", "user-join") in events  # channels need the room first


async def test_session_and_usage_pools_in_open_webui_format(tmp_path, redis_server):  # noqa: F811
    async with serve_standin() as ow:
        ow.add("a", "Ann")
        ow.chats["chat1"] = {"a": "write"}
        env = env_for(ow, redis_server)
        prefix = env["REDIS_KEY_PREFIX"]
        r = redis_server.processes[0].client()
        async with running(tmp_path, INI, env) as h:
            a = await h.connect(session_token(h, "a"))
            sid = a.get_sid()
            import orjson
            entry = orjson.loads(r.hget(f"{prefix}:session_pool", sid))
            assert entry["id"] == "a" and entry["name"] == "Ann" and entry["chat_ids"] == []
            assert abs(entry["last_seen_at"] - time.time()) < 5
            assert "token" not in entry and "profile_image_url" not in entry
            await a.call("events:chat", {"chat_id": "chat1", "data": {"type": "join"}},
                         timeout=WAIT)
            assert orjson.loads(r.hget(f"{prefix}:session_pool", sid))["chat_ids"] == ["chat1"]
            await a.call("usage", {"action": "chat", "model": "m1", "chat_id": "chat1"},
                         timeout=WAIT)
            usage = orjson.loads(r.hget(f"{prefix}:usage_pool", "m1"))
            assert set(usage) == {sid} and usage[sid]["updated_at"] > 0
            await a.disconnect()
            await until(lambda: not r.hexists(f"{prefix}:session_pool", sid),
                        "session pool entry removed at disconnect")
            assert not r.hexists(f"{prefix}:usage_pool", "m1")


async def test_directory_mode_keeps_refusing_unknown_users(tmp_path):
    async with running(tmp_path) as h:
        assert await h.refused(None) == "token_missing"
        assert await h.refused(h.token("nobody")) == "user_unknown"


async def test_note_rights_and_content_go_through_open_webui(tmp_path):
    from tests.integration.test_documents import PyReplica
    async with serve_standin() as ow:
        ow.add("a", "Ann")
        ow.add("r", "Rob")
        ow.notes["n1"] = {"a": "write", "r": "read"}
        ini = INI + "[documents]\ncontent_debounce = 0.05\n"
        async with running(tmp_path, ini, env_for(ow)) as h:
            a = await h.connect(session_token(h, "a"))
            r = await h.connect(session_token(h, "r"))
            x = await h.connect(session_token(h, "a"))
            doc = {"document_id": "note:n1"}
            for client in (a, r):
                ack = await client.call("ydoc:document:join", doc, timeout=WAIT)
                assert "error" not in (ack or {}), ack
            content = {"md": "hi", "html": "<p>hi</p>", "json": {"type": "doc"}}
            update = list(PyReplica().insert(0, "hi"))
            ack = await a.call("ydoc:document:update", {**doc, "update": update,
                                                        "data": {"content": content}},
                               timeout=WAIT)
            assert ack == {"ok": True}
            ack = await r.call("ydoc:document:update", {**doc, "update": update}, timeout=WAIT)
            assert ack["error"] == "forbidden"  # read access only, from open-webui
            await until(lambda: ow.note_updates, "content written to open-webui")
            assert ow.note_updates[0] == ("n1", "a", {"content": content})
            # open-webui away for a while: the newest content waits and is written after
            ow.down = True
            newer = {**content, "md": "hi there"}
            await x.call("ydoc:document:join", doc, timeout=WAIT)
            await x.call("ydoc:document:update", {**doc, "data": {"content": newer}},
                         timeout=WAIT)
            await until(lambda: h.app.openwebui.notes.failed > 0, "a write failed")
            ow.down = False
            await until(lambda: ow.note_updates[-1] == ("n1", "a", {"content": newer}),
                        "content written once open-webui was back", timeout=10)
            # no access at all: the join is refused by open-webui's answer
            ow.add("z")
            z = await h.connect(session_token(h, "z"))
            ack = await z.call("ydoc:document:join", doc, timeout=WAIT)
            assert ack["error"] == "forbidden"


async def test_session_pool_entries_of_a_dead_node_are_removed(tmp_path, redis_server):  # noqa: F811
    import signal

    import orjson

    from tests.support.appliance import ApplianceProcess, Harness
    async with serve_standin() as ow:
        ow.add("a", "Ann")
        env = env_for(ow, redis_server)
        prefix = env["REDIS_KEY_PREFIX"]
        r = redis_server.processes[0].client()
        ini = "[state]\nnode_ttl = 2\n[log]\nlevel = warning\n"
        dying = ApplianceProcess(tmp_path / "dying", ini, env)
        dying.start()
        try:
            async with running(tmp_path / "survivor", ini, env) as h:
                remote = Harness(None, f"http://127.0.0.1:{dying.port}")
                client = await remote.connect(session_token(h, "a"))
                sid = client.get_sid()
                assert orjson.loads(r.hget(f"{prefix}:session_pool", sid))["id"] == "a"
                dying.stop(signal.SIGKILL)
                await until(lambda: not r.hexists(f"{prefix}:session_pool", sid),
                            "the dead node's session left open-webui's pool", timeout=15)
                await remote.close()
        finally:
            dying.kill()


async def test_open_webui_announcements_refresh_cached_rights(tmp_path, redis_server):  # noqa: F811
    import socketio
    async with serve_standin() as ow:
        user = ow.add("u1", channels=["c1"])
        env = env_for(ow, redis_server)
        async with running(tmp_path, "[openwebui]\ncache_ttl = 600\n", env) as h:
            token = session_token(h, "u1")
            client = await h.connect(token)
            sid = client.get_sid()
            await client.call("user-join", {"auth": {"token": token}}, timeout=WAIT)
            foreign = socketio.AsyncRedisManager(redis_server.url, write_only=True)
            try:
                # open-webui adds the user to a channel: enter_room_for_users, as its backend
                # publishes it (python-socketio's own protocol)
                user.channels = ["c1", "c2"]
                await foreign.enter_room(sid, "/", "channel:c2")
                await until(lambda: "channel:c2" in h.app.sio.rooms(sid), "entered c2")
                # the cached channel list was forgotten: join-channels keeps c2
                assert await client.call("join-channels", {}, timeout=WAIT) == {
                    "channels": ["c1", "c2"]}
                assert "channel:c2" in h.app.sio.rooms(sid)
                # a channel created with the user in it: open-webui tells the user's room
                # (emit_to_users) and enters only its own sockets; ours enter here
                user.channels = ["c1", "c2", "c3"]
                await foreign.emit("events:channel", {"data": {"type": "channel:created"}},
                                   room="user:u1", namespace="/")
                await client.rec.wait_for("events:channel")
                await until(lambda: "channel:c3" in h.app.sio.rooms(sid),
                            "entered the new channel without join-channels")
                # access:updated to the session: its rights are asked again
                ow.notes["n1"] = {"u1": "read"}
                assert await client.call("join-note", {"note_id": "n1"}, timeout=WAIT) == {
                    "ok": True}
                del ow.notes["n1"]["u1"]
                before = ow.requests["/api/v1/notes/n1"]
                await foreign.emit("access:updated", {}, room=sid, namespace="/")
                await client.rec.wait_for("access:updated")
                ack = await client.call("join-note", {"note_id": "n1"}, timeout=WAIT)
                assert ack["error"] == "forbidden"
                assert ow.requests["/api/v1/notes/n1"] == before + 1
            finally:
                await foreign.redis.aclose()


@pytest.mark.parametrize("room_channels", [False, True])
async def test_appliance_emits_reach_tabs_on_open_webuis_own_socket(tmp_path, redis_server,  # noqa: F811
                                                                   room_channels):
    """A deployment moving over: one tab still on open-webui's socket server, one on the
    appliance. What the appliance emits reaches both, each once. (The stand-in's server
    listens like python-socketio's stock manager, on `socketio` only: with room channels
    the copy is checked on the room's channel, where open-webui's own manager listens.)"""
    import redis.asyncio as aioredis

    from tests.support.appliance import Client
    async with serve_standin(redis_url=redis_server.url) as ow:
        ow.add("a", "Ann", channels=["c1"])
        env = env_for(ow, redis_server)
        ini = INI + f"room_channels = {'true' if room_channels else 'false'}\n"
        r = aioredis.from_url(redis_server.url)
        pubsub = r.pubsub()
        await pubsub.subscribe("socketio#/#user:a" if room_channels else "socketio")
        try:
            async with running(tmp_path / "a", ini, env) as h, \
                    running(tmp_path / "b", ini, env) as other:
                token = session_token(h, "a")
                on_appliance = await h.connect(token)
                on_other_node = await other.connect(token)
                on_openwebui = Client()
                await on_openwebui.connect(ow.url, socketio_path="/ws/socket.io",
                                           auth={"token": token}, transports=["websocket"],
                                           wait_timeout=WAIT)
                try:
                    status, _ = await h.api("POST", "/api/v1/emit", {
                        "event": "events", "data": {"n": 1}, "to": {"users": ["a"]}})
                    assert status == 202
                    tabs = [on_appliance, on_other_node] + ([] if room_channels
                                                            else [on_openwebui])
                    for client in tabs:
                        assert await client.rec.wait_for("events") == {"n": 1}
                    await asyncio.sleep(0.3)  # a duplicate would have arrived by now
                    for client in tabs:
                        assert client.rec.of("events") == [{"n": 1}]
                    # the copy names the appliance as its host, so appliance bridges skip it
                    while True:
                        message = await pubsub.get_message(timeout=WAIT)
                        assert message is not None, "no copy published for open-webui"
                        if message["type"] == "message":
                            break
                    import orjson
                    copy = orjson.loads(message["data"])
                    assert copy["event"] == "events" and copy["room"] in ("user:a", ["user:a"])
                    assert copy["host_id"].startswith("rt-appliance-mirror-")
                finally:
                    await on_openwebui.disconnect()
        finally:
            await pubsub.aclose()
            await r.aclose()


async def test_echoes_of_written_note_content_reach_editors_without_it(tmp_path,
                                                                      redis_server):  # noqa: F811
    """open-webui answers a note update with `events:note` carrying the content, and its
    editor replaces everything it shows with such a change: the echo of a content the
    editors wrote comes without it; an external change (another writer) keeps it."""
    import socketio

    from tests.integration.test_documents import PyReplica
    async with serve_standin(redis_url=redis_server.url) as ow:
        ow.add("a", "Ann")
        ow.notes["n1"] = {"a": "write"}
        env = env_for(ow, redis_server)
        ini = INI + "room_channels = false\n[documents]\ncontent_debounce = 0.05\n"
        async with running(tmp_path / "a", ini, env) as h, \
                running(tmp_path / "b", ini, env) as other:
            token = session_token(h, "a")
            writer = await h.connect(token)
            watcher = await other.connect(token)
            for client in (writer, watcher):
                assert await client.call("join-note", {"note_id": "n1"}, timeout=WAIT) == {
                    "ok": True}
            await writer.call("ydoc:document:join", {"document_id": "note:n1"}, timeout=WAIT)
            content = {"md": "mine", "html": "<p>mine</p>", "json": {"type": "doc"}}
            await writer.call("ydoc:document:update", {
                "document_id": "note:n1", "update": list(PyReplica().insert(0, "mine")),
                "data": {"content": content}}, timeout=WAIT)
            for client in (writer, watcher):
                echo = await client.rec.wait_for("events:note")
                assert echo == {"id": "n1", "data": {}}
            external = {"md": "from elsewhere"}
            foreign = socketio.AsyncRedisManager(redis_server.url, write_only=True)
            try:
                await foreign.emit("events:note", {"id": "n1", "data": {"content": external}},
                                   room="note:n1", namespace="/")
                for client in (writer, watcher):
                    got = await client.rec.wait_for("events:note", lambda e: e["data"])
                    assert got["data"]["content"] == external
            finally:
                await foreign.redis.aclose()
            assert h.app.openwebui.echoes.stripped + other.app.openwebui.echoes.stripped == 2
