"""The bridge to open-webui's backend (socketio_bridge.py) on real Redis, standalone and
Cluster: python-socketio 5.18's own managers are the foreign side, as in open-webui, and
real python-socketio clients on a real appliance in Redis mode are the browsers.

The foreign side is either python-socketio's stock `AsyncRedisManager` (open-webui with
`WEBSOCKET_REDIS_ROOM_CHANNELS=false`: everything on one channel) or `RoomChannelManager`
below, which publishes like open-webui 0.12's default room-channel manager (an emit aimed
at one room on `<channel>#<namespace>#<room>`). Each test has a channel name of its own,
so tests sharing a Redis never hear each other.
"""
from __future__ import annotations

import asyncio
import contextlib
import pickle
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import socketio

from rt.app import Appliance
from rt.backends.factory import BackendError, build_redis_backend
from rt.backends.redis_conn import RedisTarget
from rt.backends.socketio_bridge import SocketioBridge
from rt.core.errors import StoreError
from tests.support.appliance import WAIT, Client, Harness, settings_for
from tests.support.redis_servers import Cluster, start_standalone

from .conftest import unique_prefix

pytestmark = pytest.mark.asyncio


class RoomChannelManager(socketio.AsyncRedisManager):
    """The publishing side of open-webui 0.12's room-channel manager: an emit aimed at one
    room (a string) goes to `<channel>#<namespace>#<room>`, every other message (callbacks,
    room changes, disconnects, emits to everybody or to a list of rooms) to `<channel>`.
    Listening stays python-socketio's: on `<channel>`, where callbacks come back."""

    async def _publish(self, data: dict) -> Any:
        room = data.get("room") if data.get("method") == "emit" else None
        channel = (f"{self.channel}#{data['namespace']}#{room}" if isinstance(room, str)
                   else self.channel)
        if not self.connected:
            self._redis_connect()
        return await self.redis.publish(channel, self.json.dumps(data))


def manager_class(room_channels: bool) -> type[socketio.AsyncRedisManager]:
    return RoomChannelManager if room_channels else socketio.AsyncRedisManager


# ---------------------------------------------------------------------- helpers
async def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll `check` (a function or coroutine function) until it returns something true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


def redis_nodes(topology) -> list:
    return topology.nodes if isinstance(topology, Cluster) else [topology.server]


async def subscribers(topology, channel: str) -> int:
    """Subscribers of `channel` on the whole topology (in a Cluster each node counts the
    subscriptions made on it)."""
    total = 0
    for node in redis_nodes(topology):
        client = aioredis.Redis(host="127.0.0.1", port=node.port, socket_timeout=WAIT)
        try:
            total += dict(await client.pubsub_numsub(channel)).get(channel.encode(), 0)
        finally:
            await client.aclose()
    return total


async def publish_raw(topology, channel: str, payload: bytes) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=redis_nodes(topology)[0].port,
                            socket_timeout=WAIT)
    try:
        await client.publish(channel, payload)
    finally:
        await client.aclose()


def ini(channel: str, room_channels: bool) -> str:
    return (f"[openwebui]\npubsub_channel = {channel}\n"
            f"room_channels = {'true' if room_channels else 'false'}\n"
            "[log]\nlevel = warning\n")


@contextlib.asynccontextmanager
async def appliance(tmp_path: Path, topology, channel: str, room_channels: bool = True,
                    prefix: str | None = None) -> AsyncIterator[Harness]:
    """A real appliance in Redis mode with the bridge on (`[openwebui] pubsub`, default);
    nodes of one deployment share a `prefix`."""
    settings = settings_for(tmp_path, ini(channel, room_channels))
    target = RedisTarget(url=topology.url, cluster=isinstance(topology, Cluster),
                         key_prefix=prefix or unique_prefix())
    app = Appliance(settings, backend=build_redis_backend(settings, target))
    await app.start()
    harness = Harness(app)
    try:
        # start() waited for the first subscription, for `redis_timeout` at most
        await eventually(lambda: bridge_of(harness).listening, "the bridge subscribed")
        yield harness
    finally:
        await close(harness)


async def close(h: Harness) -> None:
    await h.close()
    # the server finishes handling those disconnects before it stops: a disconnect hook
    # still running when the store closes would open a connection nobody closes
    await eventually(lambda: not h.app.sio.manager.rooms.get("/", {}).get(None),
                     "the sessions gone")
    await h.app.stop()


def bridge_of(h: Harness) -> SocketioBridge:
    bridge = h.app.backend.bridge
    assert bridge is not None
    return bridge


@contextlib.asynccontextmanager
async def foreign_emitter(topology, channel: str, room_channels: bool):
    """python-socketio's documented way to emit from another process."""
    manager = manager_class(room_channels)(topology.url, channel=channel, write_only=True)
    try:
        yield manager
    finally:
        if manager.redis is not None:
            await manager.redis.aclose()


class ForeignServer:
    """An AsyncServer on a python-socketio Redis manager without browsers of its own: open-
    webui's socket server when the appliance serves the browsers."""

    def __init__(self, topology, channel: str, room_channels: bool) -> None:
        self.topology, self.channel = topology, channel
        self.manager = manager_class(room_channels)(topology.url, channel=channel)
        self.sio = socketio.AsyncServer(client_manager=self.manager, async_mode="asgi")

    async def start(self) -> ForeignServer:
        before = await subscribers(self.topology, self.channel)
        self.manager.initialize()  # its listener (AsyncServer starts it at a first client)
        await eventually(lambda: self._counted(before), "the foreign server subscribed")
        return self

    async def _counted(self, before: int) -> bool:
        return await subscribers(self.topology, self.channel) > before

    async def die(self) -> None:
        """Gone without a word: its listener stops, its connections drop."""
        thread = getattr(self.manager, "thread", None)
        if thread is not None and not thread.done():
            thread.cancel()
            await asyncio.gather(thread, return_exceptions=True)
        if self.manager.pubsub is not None:
            await self.manager.pubsub.aclose()
        if self.manager.redis is not None:
            await self.manager.redis.aclose()


@contextlib.asynccontextmanager
async def foreign_server(topology, channel: str, room_channels: bool):
    server = await ForeignServer(topology, channel, room_channels).start()
    try:
        yield server
    finally:
        await server.die()


async def absent_after_marker(client: Client, event: str, emit_marker) -> None:
    """`event` did not reach `client`: a marker emitted afterwards on the same channel
    arrives, and `event` not before it."""
    marker = f"marker-{uuid.uuid4().hex[:6]}"
    await emit_marker(marker)
    await client.rec.wait_for(marker)
    assert client.rec.of(event) == []


@pytest.fixture(params=["standalone", "cluster"])
def topology(request: pytest.FixtureRequest):
    return request.getfixturevalue("redis_server" if request.param == "standalone"
                                   else "redis_cluster")


@pytest.fixture(params=[True, False], ids=["room-channels", "one-channel"])
def room_channels(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture
def channel() -> str:
    return f"socketio-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------- emits
async def test_foreign_emits_reach_local_sessions(tmp_path: Path, topology, room_channels,
                                                  channel) -> None:
    async with appliance(tmp_path, topology, channel, room_channels) as h, \
            foreign_emitter(topology, channel, room_channels) as foreign:
        ann = await h.connect(await h.user("ann"))
        bob = await h.connect(await h.user("bob"))
        ann_sid, bob_sid = ann.get_sid(), bob.get_sid()
        for sid in (ann_sid, bob_sid):
            await h.app.sio.enter_room(sid, "team")
        # with room channels this node listens on exactly its rooms' and sessions' channels
        expected = 1 if room_channels else 0
        for room in ("user:ann", "user:bob", "team", ann_sid, bob_sid):
            assert await subscribers(topology, f"{channel}#/#{room}") == expected
        assert await subscribers(topology, channel) == 1

        # to a room (the user room the appliance put ann in), to a sid, to everybody
        await foreign.emit("events", {"to": "ann"}, room="user:ann")
        assert await ann.rec.wait_for("events") == {"to": "ann"}
        await foreign.emit("direct", {"to": "bob"}, to=bob_sid)
        assert await bob.rec.wait_for("direct") == {"to": "bob"}
        await foreign.emit("all", 1)
        assert await ann.rec.wait_for("all") == 1 and await bob.rec.wait_for("all") == 1
        # to a list of rooms: one copy per session even when it is in several of them
        await foreign.emit("listed", 2, room=["team", "user:ann", "nobody-here"])
        assert await ann.rec.wait_for("listed") == 2 and await bob.rec.wait_for("listed") == 2
        # several arguments
        await foreign.emit("multi", (1, "two", {"three": 3}), room="team")
        assert await bob.rec.wait_for("multi") == (1, "two", {"three": 3})
        # binary attachments, as python-socketio encodes them (base64 under "binary")
        await foreign.emit("blob", {"yjs": b"\x00\x01\xffupdate", "n": 1}, room="team")
        assert await ann.rec.wait_for("blob") == {"yjs": b"\x00\x01\xffupdate", "n": 1}

        # skip_sid as a string and as a list
        await foreign.emit("skip-one", 1, room="team", skip_sid=ann_sid)
        assert await bob.rec.wait_for("skip-one") == 1
        await absent_after_marker(ann, "skip-one",
                                  lambda m: foreign.emit(m, None, room="team"))
        await foreign.emit("skip-all", 1, room="team", skip_sid=[ann_sid, bob_sid])
        await absent_after_marker(bob, "skip-all",
                                  lambda m: foreign.emit(m, None, room="team"))
        assert ann.rec.of("skip-all") == []

        counters = bridge_of(h).counters()
        assert counters["emit"] >= 9 and not any(k.startswith("refused") for k in counters)


async def test_emits_for_rooms_without_a_local_member_go_no_further(
        tmp_path: Path, redis_server, room_channels, channel) -> None:
    async with appliance(tmp_path, redis_server, channel, room_channels) as h, \
            foreign_emitter(redis_server, channel, room_channels) as foreign:
        ann = await h.connect(await h.user("ann"))
        for i in range(20):
            await foreign.emit("elsewhere", {"blob": b"x" * 64}, room=f"user:other-{i}")
        await foreign.emit("here", 1, room="user:ann")
        await ann.rec.wait_for("here")
        assert ann.rec.of("elsewhere") == []
        stats = bridge_of(h).stats
        if room_channels:  # not subscribed: Redis never sends them here
            assert await subscribers(redis_server, f"{channel}#/#user:other-0") == 0
            assert stats["skipped_no_local_member"] == 0
        else:  # heard, and dropped after the JSON parse
            assert stats["skipped_no_local_member"] == 20


async def test_defaults_are_python_socketios(tmp_path: Path, redis_server) -> None:
    """No [openwebui] options, python-socketio's manager with its defaults: they meet."""
    settings = settings_for(tmp_path, "[log]\nlevel = warning\n")
    assert settings.openwebui.pubsub and settings.openwebui.room_channels
    target = RedisTarget(url=redis_server.url, key_prefix=unique_prefix())
    app = Appliance(settings, backend=build_redis_backend(settings, target))
    await app.start()
    h = Harness(app)
    foreign = RoomChannelManager(redis_server.url, write_only=True)
    stock = socketio.AsyncRedisManager(redis_server.url, write_only=True)
    try:
        ann = await h.connect(await h.user("ann"))
        assert await subscribers(redis_server, "socketio#/#user:ann") == 1
        await foreign.emit("events", 1, room="user:ann")
        await stock.emit("events", 2, room="user:ann")
        await ann.rec.wait_for("events", lambda d: d == 2)
        assert ann.rec.of("events") == [1, 2]
    finally:
        for manager in (foreign, stock):
            if manager.redis is not None:
                await manager.redis.aclose()
        await close(h)


async def test_two_nodes_each_deliver_once(tmp_path: Path, topology, room_channels,
                                           channel) -> None:
    """Beside the cluster channel: each node delivers a foreign emit to its own sessions
    only, so a room with members on both nodes gets one copy per session."""
    prefix = unique_prefix()
    async with appliance(tmp_path / "a", topology, channel, room_channels, prefix) as a, \
            appliance(tmp_path / "b", topology, channel, room_channels, prefix) as b, \
            foreign_server(topology, channel, room_channels) as foreign:
        ann = await a.connect(await a.user("ann"))
        bob = await b.connect(b.token("ann"))  # the same user, a tab on the other node
        if room_channels:
            assert await subscribers(topology, f"{channel}#/#user:ann") == 2
        await foreign.sio.emit("events", 1, room="user:ann")
        await foreign.sio.emit("events", 2, room="user:ann")
        for client in (ann, bob):
            await client.rec.wait_for("events", lambda d: d == 2)
            assert client.rec.of("events") == [1, 2]
        bob.on("events", lambda data: {"from": "b", "got": data})
        assert await foreign.sio.call("events", 3, to=bob.get_sid(), timeout=5) == {
            "from": "b", "got": 3}


async def test_an_empty_channel_name_is_a_configuration_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "[openwebui]\npubsub_channel =\n")
    target = RedisTarget(url="redis://127.0.0.1:1/0")  # never contacted
    with pytest.raises(BackendError, match=r"\[openwebui\] pubsub_channel"):
        build_redis_backend(settings, target)


# ---------------------------------------------------------------------- calls
async def test_foreign_call_is_answered_by_the_browser(tmp_path: Path, topology,
                                                       room_channels, channel) -> None:
    async with appliance(tmp_path, topology, channel, room_channels) as h, \
            foreign_server(topology, channel, room_channels) as foreign:
        ann = await h.connect(await h.user("ann"))
        ann.on("events", lambda data: {"confirmed": data["q"] * 2})
        answer = await foreign.sio.call("events", {"q": 21}, to=ann.get_sid(), timeout=5)
        assert answer == {"confirmed": 42}
        # several answers at once, each to its own call
        answers = await asyncio.gather(*(
            foreign.sio.call("events", {"q": i}, to=ann.get_sid(), timeout=5)
            for i in range(5)))
        assert answers == [{"confirmed": 2 * i} for i in range(5)]
        assert bridge_of(h).stats["callbacks_published"] == 6


async def test_a_call_nobody_answers_times_out_on_the_foreign_side(
        tmp_path: Path, topology, channel) -> None:
    async with appliance(tmp_path, topology, channel) as h, \
            foreign_server(topology, channel, True) as foreign:
        ann = await h.connect(await h.user("ann"))
        release = asyncio.Event()
        asked: list[Any] = []

        async def never_in_time(data):
            asked.append(data)
            await asyncio.wait_for(release.wait(), WAIT * 2)
            return "too late"
        ann.on("events", never_in_time)
        with pytest.raises(socketio.exceptions.TimeoutError):
            await foreign.sio.call("events", {"q": 1}, to=ann.get_sid(), timeout=1)
        assert asked == [{"q": 1}]
        # the late answer still goes back (python-socketio drops an unknown callback id)
        release.set()
        await eventually(lambda: bridge_of(h).stats["callbacks_published"] == 1,
                         "the late answer published")


async def test_callbacks_reach_only_the_calls_of_this_bridge(tmp_path: Path, topology,
                                                            channel) -> None:
    async with appliance(tmp_path, topology, channel) as h:
        ann = await h.connect(await h.user("ann"))
        sid, bridge, manager = ann.get_sid(), bridge_of(h), h.app.sio.manager
        answered: asyncio.Future = asyncio.get_running_loop().create_future()
        ack_id = manager._generate_ack_id(sid, lambda *args: answered.set_result(args))
        answer = {"method": "callback", "sid": sid, "namespace": "/", "id": ack_id,
                  "args": ["yes", 2]}
        # addressed to another host: not ours to complete
        await publish_raw(topology, channel, orjson.dumps(
            {**answer, "host_id": "other", "args": ["not for you"]}))
        await publish_raw(topology, channel, orjson.dumps({**answer, "host_id": bridge.host_id}))
        assert await asyncio.wait_for(answered, WAIT) == ("yes", 2)
        assert bridge.stats["callback"] == 1 and bridge.stats["ignored"] == 1


# ---------------------------------------------------------------------- room changes
async def test_foreign_room_changes_and_disconnects(tmp_path: Path, topology, room_channels,
                                                    channel) -> None:
    async with appliance(tmp_path, topology, channel, room_channels) as h, \
            foreign_server(topology, channel, room_channels) as foreign:
        ann = await h.connect(await h.user("ann"))
        bob = await h.connect(await h.user("bob"))
        ann_sid, bob_sid = ann.get_sid(), bob.get_sid()
        manager, bridge = h.app.sio.manager, bridge_of(h)

        async def applied(sid: str, room: str, member: bool) -> None:
            await eventually(lambda: manager.in_room(sid, room) == member,
                             f"{sid} {'in' if member else 'out of'} {room}")
            await bridge.settled()  # its channel (un)subscribed, as after a local change

        # enter_room for sessions of another server: python-socketio publishes it
        await foreign.sio.enter_room(ann_sid, "chat:c1")
        await foreign.sio.enter_room(bob_sid, "chat:c1")
        await applied(ann_sid, "chat:c1", True)
        await applied(bob_sid, "chat:c1", True)
        await foreign.sio.emit("events", {"chat": 1}, room="chat:c1")
        assert await ann.rec.wait_for("events") == {"chat": 1}
        assert await bob.rec.wait_for("events") == {"chat": 1}

        await foreign.sio.leave_room(ann_sid, "chat:c1")
        await applied(ann_sid, "chat:c1", False)
        await foreign.sio.emit("after-leave", 1, room="chat:c1")
        await bob.rec.wait_for("after-leave")
        await absent_after_marker(ann, "after-leave",
                                  lambda m: foreign.sio.emit(m, None, to=ann_sid))

        await foreign.sio.close_room("chat:c1")
        await applied(bob_sid, "chat:c1", False)
        assert manager.rooms["/"].get("chat:c1") is None
        if room_channels:  # the last local member left: the room channel goes
            await eventually(lambda: _no_subscribers(topology, f"{channel}#/#chat:c1"),
                             "the room channel unsubscribed")

        # a session cannot be put into another session's sid room: refused, nothing changes
        await foreign.sio.enter_room(ann_sid, bob_sid)
        await eventually(lambda: bridge.stats["refused_malformed"] == 1, "refused")
        assert bob_sid not in manager.get_rooms(ann_sid, "/")

        # a foreign disconnect ends the session here
        gone = asyncio.Event()
        bob.on("disconnect", lambda *reason: gone.set())
        await foreign.sio.disconnect(bob_sid)
        await asyncio.wait_for(gone.wait(), WAIT)
        await eventually(lambda: not manager.is_connected(bob_sid, "/"), "bob disconnected")
        if room_channels:  # and with it the channel of its sid
            await eventually(lambda: _no_subscribers(topology, f"{channel}#/#{bob_sid}"),
                             "the sid channel unsubscribed")
        await foreign.sio.emit("still-here", 1, to=ann_sid)
        await ann.rec.wait_for("still-here")
        stats = bridge.stats
        assert stats["enter_room"] == 2 and stats["leave_room"] == 1
        assert stats["close_room"] == 1 and stats["disconnect"] == 1


async def _no_subscribers(topology, channel: str) -> bool:
    return await subscribers(topology, channel) == 0


# ---------------------------------------------------------------------- hostile input
TRIPPED: list[str] = []


def _trip() -> None:
    TRIPPED.append("unpickled")


class Tripwire:
    """Unpickling it calls `_trip`: proof that nobody unpickled what came from Redis."""

    def __reduce__(self):
        return (_trip, ())


async def test_pickled_and_malformed_messages_are_dropped_and_counted(
        tmp_path: Path, topology, channel) -> None:
    async with appliance(tmp_path, topology, channel) as h, \
            foreign_emitter(topology, channel, True) as foreign:
        ann = await h.connect(await h.user("ann"))
        bridge = bridge_of(h)
        bridge.max_message_bytes = 64 * 1024  # smaller than the default, for a quick test
        room_channel = f"{channel}#/#user:ann"
        emit = {"method": "emit", "event": "bad", "data": [1], "binary": False,
                "namespace": "/", "room": "user:ann", "skip_sid": None, "callback": None,
                "host_id": "elsewhere"}
        # pickles, as python-socketio before 5.x sent them, with a tripwire inside
        for target in (channel, room_channel):
            await publish_raw(topology, target, pickle.dumps({**emit, "trap": Tripwire()}))
        await publish_raw(topology, room_channel, pickle.dumps(Tripwire(), protocol=0))
        # not JSON, not an object, fields of the wrong type, broken attachments, too big
        malformed = [
            {**emit, "event": 5}, {**emit, "room": 7}, {**emit, "skip_sid": {"a": 1}},
            {**emit, "data": "not a list"}, {**emit, "namespace": ["/"]},
            {**emit, "callback": ["sid", "/", "one"]},
            {**emit, "binary": True, "data": [{"_placeholder": True, "num": 0}, "%%%"]},
            {**emit, "binary": True, "data": [{"_placeholder": True, "num": 3}, "AA=="]},
            {"method": "disconnect", "sid": 5, "namespace": "/", "host_id": "elsewhere"},
            {"method": "close_room", "room": None, "namespace": "/", "host_id": "x"},
        ]
        for message in malformed:
            await publish_raw(topology, room_channel, orjson.dumps(message))
        for raw in (b"not json", b"[1, 2]", b'{"no": "method"}', b"\xff\xfe"):
            await publish_raw(topology, room_channel, raw)
        await publish_raw(topology, room_channel, orjson.dumps(
            {**emit, "data": ["x" * (64 * 1024)]}))
        # then a good one: it arrives, and nothing before it did
        await foreign.emit("good", 1, room="user:ann")
        await ann.rec.wait_for("good")
        assert [event for event, _ in ann.rec.events] == ["good"]
        assert TRIPPED == []
        stats = bridge.stats
        assert stats["refused_pickle"] == 2  # protocol 0 is ASCII: it fails as "not JSON"
        assert stats["refused_not_json"] == 3  # protocol-0 pickle, b"not json", b"\xff\xfe"
        assert stats["refused_malformed"] == len(malformed) + 2
        assert stats["refused_too_large"] == 1
        assert stats["handler_errors"] == 0 and bridge.listening
        assert h.app.sio.manager.is_connected(ann.get_sid(), "/")


# ---------------------------------------------------------------------- failures
async def test_a_foreign_node_dying_breaks_nothing(tmp_path: Path, topology, channel) -> None:
    async with appliance(tmp_path, topology, channel) as h:
        ann = await h.connect(await h.user("ann"))
        release = asyncio.Event()

        async def slow_answer(data):
            await asyncio.wait_for(release.wait(), WAIT)
            return "answer"
        ann.on("events", slow_answer)

        dying = await ForeignServer(topology, channel, True).start()
        call = asyncio.ensure_future(
            dying.sio.call("events", {"q": 1}, to=ann.get_sid(), timeout=WAIT))
        await eventually(lambda: h.app.sio.manager.callbacks, "the call reached the browser")
        await dying.sio.emit("before", 1, to=ann.get_sid())
        await ann.rec.wait_for("before")
        await dying.die()
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        # the browser answers a caller that is gone: published to nobody, nothing breaks
        release.set()
        await eventually(lambda: bridge_of(h).stats["callbacks_published"] == 1,
                         "the orphan answer published")
        async with foreign_server(topology, channel, True) as other:
            ann.on("events", lambda data: {"again": data})
            assert await other.sio.call("events", 2, to=ann.get_sid(), timeout=5) == {
                "again": 2}
        await h.app.backend.ready()
        assert bridge_of(h).stats["listen_errors"] == 0


async def test_a_redis_restart_is_ridden_out(tmp_path: Path, room_channels, channel) -> None:
    topology = start_standalone(tmp_path / "redis")  # our own: this test kills it
    try:
        async with appliance(tmp_path / "node", topology, channel, room_channels) as h:
            ann = await h.connect(await h.user("ann"))
            await h.app.sio.enter_room(ann.get_sid(), "team")
            bridge = bridge_of(h)
            async with foreign_emitter(topology, channel, room_channels) as foreign:
                await foreign.emit("before", 1, room="team")
                await ann.rec.wait_for("before")

            topology.server.kill()
            await eventually(lambda: not bridge.listening, "the bridge noticed", WAIT * 2)
            with pytest.raises(StoreError, match="not subscribed"):
                await bridge.ready()
            topology.server.start()  # same port, empty: every subscription is gone
            await eventually(lambda: bridge.listening, "the bridge resubscribed", WAIT * 3)
            await bridge.ready()
            if room_channels:  # every local room's channel again, sids included
                for room in ("team", "user:ann", ann.get_sid()):
                    assert await subscribers(topology, f"{channel}#/#{room}") == 1
            async with foreign_emitter(topology, channel, room_channels) as foreign:
                await foreign.emit("after", 2, room="team")
                await foreign.emit("after-sid", 3, to=ann.get_sid())
                assert await ann.rec.wait_for("after") == 2
                assert await ann.rec.wait_for("after-sid") == 3
            assert bridge.stats["listen_errors"] >= 1
    finally:
        topology.stop()


# ---------------------------------------------------------------------- churn
async def test_nothing_is_lost_while_room_channels_churn(tmp_path: Path, topology,
                                                         room_channels, channel) -> None:
    """Sessions enter and leave rooms (so room channels are subscribed and unsubscribed
    all the time) and new sessions come and go (their sid channels too) while a foreign
    emitter publishes numbered messages to those rooms and sids: every member gets every
    message published after its entry (or its connect) completed."""
    rooms = ("r0", "r1", "r2", "r3")  # more rooms than members: rooms empty out often
    rounds = 8
    async with appliance(tmp_path, topology, channel, room_channels) as h, \
            foreign_emitter(topology, channel, room_channels) as foreign:
        users = [f"u{i}" for i in range(4)]
        clients = [await h.connect(await h.user(u)) for u in users]
        next_n = dict.fromkeys(rooms, 0)  # the number the next message to a room gets
        stop = asyncio.Event()

        async def emitter() -> None:
            while not stop.is_set():
                for room in rooms:
                    n, next_n[room] = next_n[room], next_n[room] + 1
                    await foreign.emit("tick", {"room": room, "n": n}, room=room)
                await asyncio.sleep(0)

        def got(client: Client, room: str) -> set[int]:
            return {d["n"] for d in client.rec.of("tick") if d["room"] == room}

        async def member(client: Client, rng: random.Random) -> None:
            sid = client.get_sid()
            for _ in range(rounds):
                room = rng.choice(rooms)
                await h.app.sio.enter_room(sid, room)
                first = next_n[room]  # published from here on: after the entry completed
                await eventually(lambda: max(got(client, room), default=-1) >= first + 3,
                                 f"{sid} hearing {room}")
                seen = got(client, room)
                missing = set(range(first, max(seen) + 1)) - seen
                assert not missing, f"{sid} missed {sorted(missing)} in {room} from {first}"
                await h.app.sio.leave_room(sid, room)
                await asyncio.sleep(rng.uniform(0, 0.02))

        async def newcomers() -> None:
            for i in range(rounds):
                client = await h.connect(await h.user(f"new{i}"))
                sid = client.get_sid()  # open-webui learns a sid once the connect is done
                await foreign.emit("hello", i, to=sid)
                assert await client.rec.wait_for("hello") == i
                await client.disconnect()

        emitting = asyncio.ensure_future(emitter())
        try:
            await asyncio.gather(newcomers(), *(member(c, random.Random(i))
                                                for i, c in enumerate(clients)))
        finally:
            stop.set()
            await asyncio.wait_for(emitting, WAIT)
        stats = bridge_of(h).stats
        assert stats["refused_malformed"] == stats["handler_errors"] == 0
        if room_channels:
            # the churn did unsubscribe and subscribe again; now nobody is in any room
            assert stats["channels_unsubscribed"] >= rounds
            for room in rooms:
                await eventually(lambda: _no_subscribers(topology, f"{channel}#/#{room}"),
                                 f"{room} unsubscribed")
