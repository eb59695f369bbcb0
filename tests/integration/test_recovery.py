"""Connection state recovery on one node, with the real npm socket.io-client (the version
open-webui ships) and python-socketio: a dropped TCP connection recovers its sid, rooms
and every missed event in order and exactly once; a forged or another user's pid, an
expired window, a log past its bounds give a new session; python-socketio clients get no
offsets; a recovered session announces no leave/join."""
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.appliance import Harness, running
from tests.support.cut_proxy import CutProxy
from tests.support.node_fixtures import node_driver, node_driver_factory  # noqa: F401
from tests.support.waits import until

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def cut_proxy(h: Any) -> AsyncIterator[CutProxy]:
    """A proxy in front of the appliance whose connections a test can cut, stopped after."""
    proxy = await CutProxy(h.app.port).start()
    try:
        yield proxy
    finally:
        await proxy.stop()

WAIT = 10.0
RECONNECT = {"reconnection": True, "reconnectionDelay": 50, "reconnectionDelayMax": 200,
             "randomizationFactor": 0}


def opts(token, **extra):
    return {"path": "/ws/socket.io", "transports": ["websocket"], "forceNew": True,
            "auth": {"token": token}, **RECONNECT, **extra}


async def emit(h, user, n, event="events"):
    status, body = await h.api("POST", "/api/v1/emit", {
        "event": event, "data": {"n": n}, "to": {"users": [user]}})
    assert status == 202, body


def numbers(sock, event="events"):
    return [args[0]["n"] for args in sock.received(event)]


async def drop_and_emit(h, proxy, sock, user, numbers_missed):
    """Cut the client's TCP connection, emit while it is away, wait for its reconnect."""
    proxy.cut()
    await sock.wait_disconnect(timeout=WAIT)
    for n in numbers_missed:
        await emit(h, user, n)
    return await sock.wait_notification("connect", timeout=WAIT)


async def test_dropped_connection_recovers_everything_in_order(tmp_path, node_driver):
    async with running(tmp_path) as h:
        tok = await h.user("ann")
        async with cut_proxy(h) as proxy:
            sock = await node_driver.connect("a", proxy.url, **opts(tok))
            sid = sock.sid
            assert (await sock.emit("user-join", {"auth": {"token": tok}}))[0]["id"] == "ann"
            for n in range(3):
                await emit(h, "ann", n)
            await until(lambda: numbers(sock) == [0, 1, 2], "the first events")
            # the offset is the last argument, a string, as socket.io 4.6+ sends it
            last = sock.received("events")[-1]
            assert len(last) == 2 and isinstance(last[1], str)
            again = await drop_and_emit(h, proxy, sock, "ann", range(3, 8))
            assert again["recovered"] is True and again["sid"] == sid
            await emit(h, "ann", 8)
            await until(lambda: numbers(sock)[-1:] == [8], "the live event")
            assert numbers(sock) == list(range(9))
            # the same session: its rooms are there (a room emit reaches it)
            assert h.app.gateway.identities[sid].id == "ann"
            assert h.app.recovery.results["recovered"] == 1
            # a second drop recovers again
            again = await drop_and_emit(h, proxy, sock, "ann", range(9, 12))
            assert again["recovered"] is True
            await emit(h, "ann", 12)
            await until(lambda: numbers(sock)[-1:] == [12], "the live event")
            assert numbers(sock) == list(range(13))
            await sock.disconnect()


async def test_recovery_without_any_event_seen(tmp_path, node_driver):
    """A client that got no event before the drop (no offset yet) still recovers from the
    session's start."""
    async with running(tmp_path) as h:
        tok = await h.user("ann")
        async with cut_proxy(h) as proxy:
            sock = await node_driver.connect("a", proxy.url, **opts(tok))
            await until(lambda: sock.sid in h.app.gateway.identities, "bound")
            again = await drop_and_emit(h, proxy, sock, "ann", [1, 2])
            assert again["recovered"] is True and again["sid"] == sock.sid
            await until(lambda: numbers(sock) == [1, 2], "the missed events")
            await sock.disconnect()


async def test_forged_and_foreign_pid_recover_nothing(tmp_path, node_driver):
    async with running(tmp_path) as h:
        tok_a = await h.user("ann")
        tok_b = await h.user("bob")
        a = await node_driver.connect("a", h.url, **opts(tok_a, reconnection=False))
        await emit(h, "ann", 1)
        await until(lambda: numbers(a) == [1], "the event")
        pid = h.app.recovery.pid_of(a.sid)
        offset = a.received("events")[-1][-1]
        # another user's token with Ann's pid: a new session of Bob, nothing of Ann's
        b = await node_driver.connect("b", h.url, **opts(
            tok_b, reconnection=False, auth={"token": tok_b, "pid": pid, "offset": offset}))
        assert b.sid != a.sid
        # a forged secret with Ann's own token: a new session
        sid = pid.rpartition(".")[0]
        c = await node_driver.connect("c", h.url, **opts(
            tok_a, reconnection=False, auth={"token": tok_a, "pid": sid + ".forged",
                                             "offset": offset}))
        assert c.sid != a.sid
        assert h.app.recovery.results["forged"] == 2
        await emit(h, "ann", 2)
        await until(lambda: numbers(a) == [1, 2] and numbers(c) == [2], "live events")
        assert numbers(b) == []
        for sock in (a, b, c):
            await sock.disconnect()


async def test_expired_window_gives_a_new_session(tmp_path, node_driver):
    ini = "[recovery]\nmax_disconnection = 0.5\n"
    async with running(tmp_path, ini) as h:
        tok = await h.user("ann")
        async with cut_proxy(h) as proxy:
            sock = await node_driver.connect("a", proxy.url, **opts(
                tok, reconnectionDelay=1500, reconnectionDelayMax=1500))
            await emit(h, "ann", 1)
            await until(lambda: numbers(sock) == [1], "the event")
            again = await drop_and_emit(h, proxy, sock, "ann", [2])
            assert again["recovered"] is False and again["sid"] != sock.sid
            await emit(h, "ann", 3)
            await until(lambda: numbers(sock) == [1, 3], "the live event")
            await sock.disconnect()


async def test_bounds_exceeded_fails_cleanly(tmp_path, node_driver):
    ini = "[recovery]\nmax_packets = 3\n"
    async with running(tmp_path, ini) as h:
        tok = await h.user("ann")
        async with cut_proxy(h) as proxy:
            sock = await node_driver.connect("a", proxy.url, **opts(tok))
            await emit(h, "ann", 0)
            await until(lambda: numbers(sock) == [0], "the event")
            again = await drop_and_emit(h, proxy, sock, "ann", range(1, 6))
            # no partial replay presented as complete: not recovered, nothing replayed
            assert again["recovered"] is False
            await emit(h, "ann", 6)
            await until(lambda: numbers(sock)[-1:] == [6], "the live event")
            assert numbers(sock) == [0, 6]
            assert h.app.recovery.results["failed_bounds"] == 1
            # a later drop within the bounds recovers again (the session has a new pid)
            again = await drop_and_emit(h, proxy, sock, "ann", [7])
            assert again["recovered"] is True
            await until(lambda: numbers(sock)[-1:] == [7], "the missed event")
            await sock.disconnect()


async def test_event_too_large_to_keep_fails_recovery(tmp_path, node_driver):
    ini = "[recovery]\nmax_packet_bytes = 1024\n"
    async with running(tmp_path, ini) as h:
        tok = await h.user("ann")
        async with cut_proxy(h) as proxy:
            sock = await node_driver.connect("a", proxy.url, **opts(tok))
            await emit(h, "ann", 0)
            await until(lambda: numbers(sock) == [0], "the event")
            proxy.cut()
            await sock.wait_disconnect(timeout=WAIT)
            status, _ = await h.api("POST", "/api/v1/emit", {
                "event": "events", "data": {"n": 1, "big": "x" * 4096},
                "to": {"users": ["ann"]}})
            assert status == 202
            again = await sock.wait_notification("connect", timeout=WAIT)
            assert again["recovered"] is False
            await sock.disconnect()


async def test_python_socketio_client_is_unaffected(tmp_path):
    """No pid, no offset argument: its handlers get exactly what was emitted."""
    async with running(tmp_path) as h:
        tok = await h.user("ann")
        client = await h.connect(tok)
        assert h.app.recovery.pid_of(client.get_sid()) is None
        await emit(h, "ann", 1)
        got = await client.rec.wait_for("events")
        assert got == {"n": 1}
        assert [args for ev, args in client.rec.events if ev == "events"] == [({"n": 1},)]


async def test_mixed_room_each_client_gets_its_form(tmp_path, node_driver):
    async with running(tmp_path) as h:
        tok = await h.user("ann")
        py = await h.connect(tok)
        js = await node_driver.connect("a", h.url, **opts(tok, reconnection=False))
        await emit(h, "ann", 5)
        await until(lambda: numbers(js) == [5], "the node client's event")
        assert await py.rec.wait_for("events") == {"n": 5}
        assert len(js.received("events")[0]) == 2
        await js.disconnect()


async def test_no_leave_join_for_a_recovered_session(tmp_path, node_driver):
    """Another viewer of a document sees no ydoc:user:left / joined pair when a session
    recovers; presence keeps the user."""
    async with running(tmp_path) as h:
        tok_a = await h.user("ann")
        tok_b = await h.user("bob")
        await h.api("PUT", "/api/v1/notes/n1", {"owner": "ann", "read": ["bob"],
                                                "write": ["bob"]})
        async with cut_proxy(h) as proxy:
            a = await node_driver.connect("a", proxy.url, **opts(tok_a))
            b = await node_driver.connect("b", h.url, **opts(tok_b, reconnection=False))
            for sock in (b, a):
                ack = await sock.emit("ydoc:document:join", {
                    "document_id": "note:n1", "user_id": "x", "user_name": "x",
                    "user_color": "#000"})
                assert ack is not None
            await b.wait_for("ydoc:user:joined", timeout=WAIT)
            proxy.cut()
            await a.wait_disconnect(timeout=WAIT)
            again = await a.wait_notification("connect", timeout=WAIT)
            assert again["recovered"] is True
            status, body = await h.api("GET", "/api/v1/users/ann/presence")
            assert status == 200 and body["online"] is True
            await asyncio.sleep(0.3)
            assert b.received("ydoc:user:left") == []
            assert len(b.received("ydoc:user:joined")) == 1
            await a.disconnect()
            # a client's own disconnect is a leave, announced at once
            await b.wait_for("ydoc:user:left", timeout=WAIT)
            await b.disconnect()


async def test_binary_events_are_recovered(tmp_path, node_driver):
    async with running(tmp_path) as h:
        tok = await h.user("ann")
        async with cut_proxy(h) as proxy:
            sock = await node_driver.connect("a", proxy.url, **opts(tok))
            await h.app.sio.emit("blob", {"n": 0, "bytes": b"\x00\x01"}, to="user:ann")
            await until(lambda: len(sock.received("blob")) == 1, "the binary event")
            proxy.cut()
            await sock.wait_disconnect(timeout=WAIT)
            for n in (1, 2):
                await h.app.sio.emit("blob", {"n": n, "bytes": bytes([n]) * 3}, to="user:ann")
            again = await sock.wait_notification("connect", timeout=WAIT)
            assert again["recovered"] is True
            await until(lambda: len(sock.received("blob")) == 3, "the missed binary events")
            got = [(args[0]["n"], args[0]["bytes"]) for args in sock.received("blob")]
            assert got == [(0, b"\x00\x01"), (1, b"\x01" * 3), (2, b"\x02" * 3)]
            await sock.disconnect()


async def test_half_open_connection_is_taken_over(tmp_path, node_driver):
    """The client lost its connection but the server has not noticed (a phone changing
    networks): the reconnect takes the session over at once, without waiting for the old
    connection's ping timeout, and nothing is announced."""
    async with running(tmp_path) as h:
        tok = await h.user("ann")
        async with cut_proxy(h) as proxy:
            sock = await node_driver.connect("a", proxy.url, **opts(tok))
            sid = sock.sid
            await emit(h, "ann", 0)
            await until(lambda: numbers(sock) == [0], "the event")
            proxy.strand()
            await sock.wait_disconnect(timeout=WAIT)
            assert sid in h.app.gateway.identities  # the server still has the old one
            await emit(h, "ann", 1)  # written to the stranded connection, never read
            again = await sock.wait_notification("connect", timeout=WAIT)
            assert again["recovered"] is True and again["sid"] == sid
            await emit(h, "ann", 2)
            await until(lambda: numbers(sock)[-1:] == [2], "the live event")
            assert numbers(sock) == [0, 1, 2]
            assert list(h.app.gateway.identities) == [sid]
            status, body = await h.api("GET", "/api/v1/users/ann/presence")
            assert body["sessions"] == 1
            await sock.disconnect()


async def test_leave_is_announced_when_the_window_passes(tmp_path, node_driver):
    ini = "[recovery]\nmax_disconnection = 0.5\n"
    async with running(tmp_path, ini) as h:
        tok_a = await h.user("ann")
        tok_b = await h.user("bob")
        await h.api("PUT", "/api/v1/notes/n1", {"owner": "ann", "read": ["bob"],
                                                "write": ["bob"]})
        async with cut_proxy(h) as proxy:
            a = await node_driver.connect("a", proxy.url, **opts(tok_a, reconnection=False))
            b = await node_driver.connect("b", h.url, **opts(tok_b, reconnection=False))
            for sock in (b, a):
                await sock.emit("ydoc:document:join", {"document_id": "note:n1"})
            await b.wait_for("ydoc:user:joined", timeout=WAIT)
            proxy.cut()  # and the tab never comes back
            await a.wait_disconnect(timeout=WAIT)
            left = await b.wait_for("ydoc:user:left", timeout=WAIT)
            assert left[0]["user_id"] == "ann"
            assert h.app.recovery.results["expired"] == 1
            status, body = await h.api("GET", "/api/v1/users/ann/presence")
            assert body["online"] is False
            await b.disconnect()


async def test_call_to_a_tab_that_is_away_is_asked_when_it_is_back(tmp_path, node_driver):
    """A tool's confirmation (a call: an event with an ack) made while the tab is away is
    asked once it has recovered, and its answer reaches the caller."""
    async with running(tmp_path) as h:
        tok = await h.user("ann")
        async with cut_proxy(h) as proxy:
            sock = await node_driver.connect("a", proxy.url, **opts(
                tok, autoAck="yes", reconnectionDelay=500, reconnectionDelayMax=500))
            sid = sock.sid
            proxy.cut()
            await sock.wait_disconnect(timeout=WAIT)
            call = asyncio.ensure_future(
                h.app.emitter.call(sid, "confirm", {"q": "run the tool?"}, WAIT))
            again = await sock.wait_notification("connect", timeout=WAIT)
            assert again["recovered"] is True
            answer = await asyncio.wait_for(call, WAIT)
            assert answer == {"answer": "yes", "got": [{"q": "run the tool?"}]}
            assert h.app.recovery.results["call_parked"] == 1
            await sock.disconnect()


async def test_one_node_restart_recovers_its_sessions(tmp_path, node_driver):
    """Embedded state: a graceful restart of the only node keeps what recovery needs in its
    data dir, and the tabs recover on the new process."""
    from rt.app import Appliance
    from tests.support.appliance import settings_for

    settings = settings_for(tmp_path)
    first = Appliance(settings)
    await first.start()
    proxy = await CutProxy(first.port).start()
    second = None
    try:
        h = Harness(first)
        tok = await h.user("ann")
        sock = await node_driver.connect("a", proxy.url, **opts(
            tok, reconnectionDelay=300, reconnectionDelayMax=300))
        for n in range(3):
            await emit(h, "ann", n)
        await until(lambda: numbers(sock) == [0, 1, 2], "the first events")
        await h.close()
        stopping, first = first, None
        await stopping.stop()
        await sock.wait_disconnect(timeout=WAIT)
        second = Appliance(settings)
        await second.start()
        proxy.target_port = second.port
        again = await sock.wait_notification("connect", timeout=WAIT)
        assert again["recovered"] is True and again["sid"] == sock.sid
        h2 = Harness(second)
        await emit(h2, "ann", 3)
        await until(lambda: numbers(sock)[-1:] == [3], "the live event")
        assert numbers(sock) == [0, 1, 2, 3]
        await h2.close()
        await sock.disconnect()
    finally:
        await proxy.stop()
        for app in (first, second):
            if app is not None:
                await app.stop()


async def test_chat_presence_does_not_flap_and_a_leave_is_told_after_the_window(
        tmp_path, node_driver):
    """open-webui 0.12 shared chats: the other viewer sees no chat:presence change when a
    tab recovers; when a tab does not come back, its leave is told once the window passed
    (with the chat rooms it had)."""
    from tests.integration.test_openwebui_identity import env_for, session_token
    from tests.support.openwebui_standin import serve_standin

    async with serve_standin() as ow:
        ow.add("a", "Ann")
        ow.add("b", "Bob")
        ow.chats["chat1"] = {"a": "write", "b": "write"}
        ini = "[openwebui]\ncache_ttl = 30\n[recovery]\nmax_disconnection = 1\n"
        async with running(tmp_path, ini, env_for(ow)) as h:
            async with cut_proxy(h) as proxy:
                ann = await node_driver.connect("a", proxy.url, **opts(session_token(h, "a")))
                bob = await h.connect(session_token(h, "b"))
                join = {"chat_id": "chat1", "data": {"type": "join"}}
                assert (await ann.emit("events:chat", join))[0] is True
                assert await bob.call("events:chat", join, timeout=WAIT) is True

                def presences():
                    return [e["data"]["data"]["users"] for e in bob.rec.of("events")
                            if e["data"]["type"] == "chat:presence"]
                await until(lambda: [{"id": "a", "name": "Ann"}, {"id": "b", "name": "Bob"}]
                            in presences(), "both viewers")
                seen = len(presences())
                proxy.cut()
                await ann.wait_disconnect(timeout=WAIT)
                again = await ann.wait_notification("connect", timeout=WAIT)
                assert again["recovered"] is True
                await asyncio.sleep(1.5)  # past the window: nothing was due
                assert len(presences()) == seen
                await ann.disconnect()  # a client's own disconnect: told at once
                await until(lambda: presences()[-1:] == [[{"id": "b", "name": "Bob"}]],
                            "Ann's leave")
                # a tab that goes for good: its leave is told once the window passed
                ann = await node_driver.connect("a2", proxy.url, **opts(
                    session_token(h, "a"), reconnection=False))
                assert (await ann.emit("events:chat", join))[0] is True
                await until(lambda: len(presences()[-1]) == 2, "Ann back")
                seen = len(presences())
                proxy.cut()
                await ann.wait_disconnect(timeout=WAIT)
                await asyncio.sleep(0.5)
                assert len(presences()) == seen  # not yet: she may still come back
                await until(lambda: presences()[-1:] == [[{"id": "b", "name": "Bob"}]],
                            "Ann's leave after the window")
                assert h.app.recovery.results["expired"] == 1
