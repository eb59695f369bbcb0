"""Connection state recovery and open-webui's own backend, on real Redis, with the npm
socket.io-client (the version open-webui ships): what open-webui emits through its
python-socketio pub/sub while a tab is away is kept for the tab (its node keeps the tab's
rooms subscribed) and replayed at its recovery; a call (a tool's confirmation or input
dialog, `sio.call`) that the tab had not answered when its connection dropped, or that
was made while it was away, is asked again once it has recovered, and the answer reaches
the caller. open-webui's side is python-socketio 5.18's own managers (the stock one, and
one publishing like open-webui 0.12's room-channel manager)."""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio

from tests.contract.test_socketio_bridge import ForeignServer, manager_class
from tests.support.appliance import WAIT, Harness, running
from tests.support.cut_proxy import CutProxy
from tests.support.node_fixtures import node_driver, node_driver_factory  # noqa: F401
from tests.support.redis_servers import Cluster, redis_cluster, redis_server  # noqa: F401
from tests.support.waits import until

pytestmark = pytest.mark.asyncio

RECONNECT = {"reconnection": True, "reconnectionDelay": 400, "reconnectionDelayMax": 400,
             "randomizationFactor": 0}


def opts(token: str, **extra: Any) -> dict:
    return {"path": "/ws/socket.io", "transports": ["websocket"], "forceNew": True,
            "auth": {"token": token}, **RECONNECT, **extra}


def numbers(sock: Any) -> list[int]:
    return [args[0]["n"] for args in sock.received("events")]


@pytest.fixture(params=[True, False], ids=["room-channels", "one-channel"])
def room_channels(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture(params=["standalone", "cluster"])
def topology(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("redis_server" if request.param == "standalone"
                                   else "redis_cluster")


@contextlib.asynccontextmanager
async def appliance(tmp_path: Any, redis: Any, channel: str,
                    room_channels: bool = True) -> AsyncIterator[Harness]:
    """One appliance in Redis mode, its bridge on `channel` (each test its own)."""
    env = {"WEBSOCKET_MANAGER": "redis", "WEBSOCKET_REDIS_URL": redis.url,
           "REDIS_KEY_PREFIX": f"rt-rw-{uuid.uuid4().hex[:10]}"}
    if isinstance(redis, Cluster):
        env["WEBSOCKET_REDIS_CLUSTER"] = "true"
    ini = (f"[openwebui]\npubsub_channel = {channel}\n"
           f"room_channels = {'true' if room_channels else 'false'}\n[log]\nlevel = warning\n")
    async with running(tmp_path, ini, env=env) as h:
        await until(lambda: h.app.backend.bridge.listening, "the bridge subscribed")
        yield h


@contextlib.asynccontextmanager
async def closing(manager: socketio.AsyncRedisManager) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if manager.redis is not None:
            await manager.redis.aclose()


@contextlib.asynccontextmanager
async def away_tab(h: Harness, node_driver: Any, token: str, **extra: Any
                   ) -> AsyncIterator[tuple[Any, CutProxy]]:
    """A tab connected through a proxy that the test can cut."""
    proxy = await CutProxy(h.app.port).start()
    try:
        sock = await node_driver.connect("t", proxy.url, **opts(token, **extra))
        yield sock, proxy
    finally:
        await proxy.stop()


async def test_open_webuis_emits_to_a_tab_that_is_away_are_replayed(
        tmp_path, node_driver, topology, room_channels):
    """The tab is the only member of its rooms: once it is away, no node has a member
    there. Its node keeps the rooms subscribed; what open-webui emits meanwhile (to the
    user's room, and to the tab's sid) is kept for it and replayed at its recovery, in
    order with the appliance's own emits."""
    channel = f"socketio-{uuid.uuid4().hex[:10]}"
    foreign = manager_class(room_channels)(topology.url, channel=channel,
                                           write_only=True)
    async with appliance(tmp_path, topology, channel, room_channels) as h, \
            closing(foreign):
        def recorded() -> int:  # open-webui's emits the bridge has handled
            return h.app.backend.bridge.stats["emit"]
        tok = await h.user("ann")
        async with away_tab(h, node_driver, tok) as (sock, proxy):
            sid = sock.sid
            await foreign.emit("events", {"n": 0}, room="user:ann")
            await until(lambda: numbers(sock) == [0], "open-webui's first event")
            proxy.cut()
            await sock.wait_disconnect(timeout=WAIT)
            await foreign.emit("events", {"n": 1}, room="user:ann")
            # two publishers have no order between them: the next one once it is handled
            await until(lambda: recorded() == 2, "open-webui's emit handled")
            await h.app.emitter.emit("events", {"n": 2}, users=["ann"])
            await foreign.emit("events", {"n": 3}, room=sid)
            await until(lambda: recorded() == 3, "the emit to the sid handled")
            # everybody (no room): goes to the main channel in both layouts
            await foreign.emit("events", {"n": 4})
            await until(lambda: recorded() == 4, "the emit to everybody handled")
            again = await sock.wait_notification("connect", timeout=WAIT * 2)
            assert again["recovered"] is True and again["sid"] == sid
            await until(lambda: len(numbers(sock)) >= 5, "the missed events")
            await foreign.emit("events", {"n": 5}, room="user:ann")
            await until(lambda: numbers(sock)[-1:] == [5], "the live event")
            assert numbers(sock) == [0, 1, 2, 3, 4, 5]
            # every one of them carried its offset (the client kept it)
            assert all(isinstance(args[-1], str) for args in sock.received("events"))
            await sock.disconnect()


async def test_a_live_tab_recovers_across_open_webuis_emits(
        tmp_path, node_driver, redis_server):
    """open-webui's emits to a connected tab are recorded too (with an offset): a later
    drop recovers across them instead of failing."""
    channel = f"socketio-{uuid.uuid4().hex[:10]}"
    foreign = manager_class(True)(redis_server.url, channel=channel, write_only=True)
    async with appliance(tmp_path, redis_server, channel) as h, closing(foreign):
        tok = await h.user("ann")
        other = await node_driver.connect("o", h.url, **opts(tok, reconnection=False))
        async with away_tab(h, node_driver, tok) as (sock, proxy):
            for n in range(3):
                await foreign.emit("events", {"n": n}, room="user:ann")
            await until(lambda: numbers(sock) == [0, 1, 2], "open-webui's events")
            proxy.cut()
            await sock.wait_disconnect(timeout=WAIT)
            await foreign.emit("events", {"n": 3}, room="user:ann")
            await until(lambda: numbers(other) == [0, 1, 2, 3], "the other tab's")
            again = await sock.wait_notification("connect", timeout=WAIT * 2)
            assert again["recovered"] is True
            await until(lambda: numbers(sock) == [0, 1, 2, 3], "the missed event")
            assert h.app.recovery.results["failed_unrecorded"] == 0
            # the tab that stayed got each once, with an offset
            assert all(isinstance(args[-1], str) for args in other.received("events"))
            await sock.disconnect()
        await other.disconnect()


async def test_open_webuis_call_shown_before_the_drop_is_asked_again(
        tmp_path, node_driver, redis_server, room_channels):
    """A tool's confirmation shown before the connection dropped, answered while it was
    down (socket.io-client drops an ack it cannot send): asked again after the recovery,
    and the answer reaches open-webui's `sio.call`."""
    channel = f"socketio-{uuid.uuid4().hex[:10]}"
    async with appliance(tmp_path, redis_server, channel, room_channels) as h:
        foreign = await ForeignServer(redis_server, channel, room_channels).start()
        try:
            tok = await h.user("ann")
            async with away_tab(h, node_driver, tok, holdAcks=True) as (sock, proxy):
                sid = sock.sid
                call = asyncio.ensure_future(
                    foreign.sio.call("events", {"q": "run it?"}, to=sid, timeout=WAIT * 4))
                await sock.wait_for("events", timeout=WAIT)
                proxy.cut()
                await sock.wait_disconnect(timeout=WAIT)
                lost = await node_driver.request("answer", name="t", index=0, value="early")
                assert lost["connected"] is False  # socket.io-client sends it nowhere
                again = await sock.wait_notification("connect", timeout=WAIT * 2)
                assert again["recovered"] is True
                await until(lambda: len(sock.received("events")) == 2, "the call asked again")
                assert sock.received("events")[1][0] == {"q": "run it?"}
                await node_driver.request("answer", name="t", index=1, value="yes")
                assert await asyncio.wait_for(call, WAIT * 2) == "yes"
                assert h.app.recovery.calls.asked == 1
                await sock.disconnect()
        finally:
            await foreign.die()


async def test_an_answer_given_after_the_recovery_to_the_old_dialog_counts(
        tmp_path, node_driver, redis_server):
    """The dialog was still open during the drop; the user answers it after the recovery:
    the ack (with the old ack id, on the new connection) reaches open-webui's caller,
    once."""
    channel = f"socketio-{uuid.uuid4().hex[:10]}"
    async with appliance(tmp_path, redis_server, channel) as h:
        foreign = await ForeignServer(redis_server, channel, True).start()
        try:
            tok = await h.user("ann")
            async with away_tab(h, node_driver, tok, holdAcks=True) as (sock, proxy):
                call = asyncio.ensure_future(
                    foreign.sio.call("events", {"q": 1}, to=sock.sid, timeout=WAIT * 4))
                await sock.wait_for("events", timeout=WAIT)
                proxy.cut()
                await sock.wait_disconnect(timeout=WAIT)
                again = await sock.wait_notification("connect", timeout=WAIT * 2)
                assert again["recovered"] is True
                await until(lambda: len(sock.received("events")) == 2, "the call asked again")
                await node_driver.request("answer", name="t", index=0, value="old dialog")
                assert await asyncio.wait_for(call, WAIT * 2) == "old dialog"
                await node_driver.request("answer", name="t", index=1, value="new dialog")
                await asyncio.sleep(0.3)
                assert h.app.backend.bridge.stats["callbacks_published"] == 1
                await sock.disconnect()
        finally:
            await foreign.die()


async def test_open_webuis_call_while_the_tab_is_away_is_asked_when_it_is_back(
        tmp_path, node_driver, redis_server, room_channels):
    """open-webui calls the tab's sid while it is away (nobody else subscribes that
    channel): its node hears it, keeps it, and the tab is asked once it has recovered."""
    channel = f"socketio-{uuid.uuid4().hex[:10]}"
    async with appliance(tmp_path, redis_server, channel, room_channels) as h:
        foreign = await ForeignServer(redis_server, channel, room_channels).start()
        try:
            tok = await h.user("ann")
            async with away_tab(h, node_driver, tok, autoAck="ok") as (sock, proxy):
                sid = sock.sid
                proxy.cut()
                await sock.wait_disconnect(timeout=WAIT)
                call = asyncio.ensure_future(
                    foreign.sio.call("events", {"q": 2}, to=sid, timeout=WAIT * 4))
                await until(lambda: h.app.backend.bridge.stats["calls_parked"] == 1,
                            "the call kept for the tab")
                again = await sock.wait_notification("connect", timeout=WAIT * 2)
                assert again["recovered"] is True
                assert await asyncio.wait_for(call, WAIT * 2) == {"answer": "ok",
                                                                  "got": [{"q": 2}]}
                await sock.disconnect()
        finally:
            await foreign.die()


async def test_the_apis_call_shown_before_the_drop_is_asked_again(tmp_path, node_driver):
    """One node, embedded state: the appliance's own call (`/api/v1/call`), answered while
    the connection was down, is asked again after the recovery; the caller gets the
    answer."""
    async with running(tmp_path) as h:
        tok = await h.user("ann")
        async with away_tab(h, node_driver, tok, holdAcks=True) as (sock, proxy):
            call = asyncio.ensure_future(h.api("POST", "/api/v1/call", {
                "sid": sock.sid, "event": "confirm", "data": {"q": 3}, "timeout_s": WAIT * 4}))
            await sock.wait_for("confirm", timeout=WAIT)
            proxy.cut()
            await sock.wait_disconnect(timeout=WAIT)
            await node_driver.request("answer", name="t", index=0, value="lost")
            again = await sock.wait_notification("connect", timeout=WAIT * 2)
            assert again["recovered"] is True
            await until(lambda: len(sock.received("confirm")) == 2, "the call asked again")
            await node_driver.request("answer", name="t", index=1, value="yes")
            assert await asyncio.wait_for(call, WAIT * 2) == (200, {"ack": "yes"})
            await sock.disconnect()


async def test_no_call_is_asked_twice_once_answered(tmp_path, node_driver):
    """A call answered before the drop is not asked again after the recovery."""
    async with running(tmp_path) as h:
        tok = await h.user("ann")
        async with away_tab(h, node_driver, tok, autoAck="fine") as (sock, proxy):
            answer = await h.app.emitter.call(sock.sid, "confirm", {"q": 4}, WAIT)
            assert answer == {"answer": "fine", "got": [{"q": 4}]}
            await asyncio.sleep(0.2)  # the kept call removed
            proxy.cut()
            await sock.wait_disconnect(timeout=WAIT)
            again = await sock.wait_notification("connect", timeout=WAIT * 2)
            assert again["recovered"] is True
            await asyncio.sleep(0.5)
            assert len(sock.received("confirm")) == 1
            assert h.app.recovery.calls.asked == 0
            await sock.disconnect()


async def test_a_lost_pub_sub_makes_an_away_tabs_recovery_fail_cleanly(
        tmp_path, node_driver, redis_server):
    """The node's connection to open-webui's pub/sub is lost while the tab is away: what
    open-webui sent meanwhile is unknown, so the tab goes on (same sid) without a replay
    presented as complete."""
    channel = f"socketio-{uuid.uuid4().hex[:10]}"
    async with appliance(tmp_path, redis_server, channel) as h:
        tok = await h.user("ann")
        async with away_tab(h, node_driver, tok, reconnectionDelay=2500,
                            reconnectionDelayMax=2500) as (sock, proxy):
            sid = sock.sid
            proxy.cut()
            await sock.wait_disconnect(timeout=WAIT)
            bridge = h.app.backend.bridge
            lost = bridge.stats["listen_errors"]
            await bridge.settled()  # the leave's room changes applied: the reader alone
            await asyncio.sleep(0.2)  # (a kill during a SUBSCRIBE trips redis-py itself)
            admin = redis_server.server.client()
            try:
                assert admin.client_kill_filter(_type="pubsub") >= 1
            finally:
                admin.close()
            await until(lambda: bridge.stats["listen_errors"] > lost and bridge.listening,
                        "the bridge subscribed again")
            await until(lambda: h.app.recovery.unrecorded["pubsub_lost"] >= 1, "the gap")
            again = await sock.wait_notification("connect", timeout=WAIT * 2)
            assert again["recovered"] is False and again["sid"] == sid
            assert h.app.recovery.results["failed_unrecorded"] == 1
            await sock.disconnect()


async def test_open_webui_disconnecting_a_tab_that_is_away_ends_it(
        tmp_path, node_driver, redis_server):
    """open-webui disconnects a sid after its access changed (`access:updated`, then a
    disconnect): a tab that is away at the time does not come back with its rooms; it
    gets a new session when it reconnects."""
    channel = f"socketio-{uuid.uuid4().hex[:10]}"
    async with appliance(tmp_path, redis_server, channel) as h:
        foreign = await ForeignServer(redis_server, channel, True).start()
        try:
            tok = await h.user("ann")
            async with away_tab(h, node_driver, tok, reconnectionDelay=1500,
                                reconnectionDelayMax=1500) as (sock, proxy):
                sid = sock.sid
                proxy.cut()
                await sock.wait_disconnect(timeout=WAIT)
                await foreign.sio.disconnect(sid)
                await until(lambda: h.app.recovery.results["ended_by_openwebui"] == 1,
                            "the away session ended")
                again = await sock.wait_notification("connect", timeout=WAIT * 2)
                assert again["recovered"] is False and again["sid"] != sid
                await sock.disconnect()
        finally:
            await foreign.die()


async def test_the_handover_keeps_open_webuis_emits_in_order(
        tmp_path, node_driver, topology):
    """Node a held the tab and reads its messages late (its recording slowed here); the
    tab recovers on node b, and open-webui's next emit reaches b right after b's claim,
    before a has answered it: b records it once a has recorded everything before, so the
    tab gets both, in open-webui's order."""
    from tests.contract.conftest import unique_prefix
    from tests.contract.test_socketio_bridge import appliance as node

    channel = f"socketio-{uuid.uuid4().hex[:10]}"
    prefix = unique_prefix()
    foreign = manager_class(True)(topology.url, channel=channel, write_only=True)
    async with node(tmp_path / "a", topology, channel, True, prefix) as a, \
            node(tmp_path / "b", topology, channel, True, prefix) as b, closing(foreign):
        tok = await a.user("ann")
        proxy = await CutProxy(a.app.port).start()
        try:
            sock = await node_driver.connect("t", proxy.url, **opts(tok))
            proxy.target_port = b.app.port
            proxy.cut()
            await sock.wait_disconnect(timeout=WAIT)
            recorder = a.app.recovery
            record = recorder.record_foreign

            async def late(event: str, args: list, sids: list) -> bool:
                await asyncio.sleep(1.0)
                return await record(event, args, sids)
            recorder.record_foreign = late  # type: ignore[method-assign]
            away = b.app.backend.bridge.away
            on_owner = away.on_owner
            published: list[asyncio.Task] = []

            async def claimed(data: dict) -> None:
                await on_owner(data)
                if data.get("host_id") == b.app.backend.bridge.host_id and not published:
                    published.append(asyncio.ensure_future(
                        foreign.emit("events", {"n": 2}, room="user:ann")))
            away.on_owner = claimed  # type: ignore[method-assign]
            await foreign.emit("events", {"n": 1}, room="user:ann")
            again = await sock.wait_notification("connect", timeout=WAIT * 2)
            assert again["recovered"] is True
            await until(lambda: len(numbers(sock)) >= 2, "both events")
            await asyncio.sleep(0.3)
            assert numbers(sock) == [1, 2]
            await sock.disconnect()
        finally:
            await proxy.stop()
