"""The Redis client manager across nodes, on real Redis topologies (standalone, Sentinel,
Cluster): emits, room changes, disconnects and `call` acks cross nodes through the prefixed
channel; emits for rooms without a member on a node stop at that node's first look; the
listener comes back after a Redis restart or a failover; a publish never raises.

A node here is python-socketio's manager on a stand-in server that records what the
manager hands to Engine.IO, so no sockets beyond Redis's are involved.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import socketio

from rt.backends.redis_conn import RedisTarget
from rt.backends.redis_manager import RedisClientManager
from rt.core.errors import StoreError
from tests.support.redis_servers import free_port, start_standalone

from .conftest import unique_prefix

pytestmark = pytest.mark.asyncio
WAIT = 10.0


class Node:
    """The part of python-socketio's AsyncServer that the manager talks to."""

    packet_class = socketio.packet.Packet
    _ids = itertools.count(1)

    class eio:  # noqa: N801 - the attribute python-socketio calls
        @staticmethod
        def generate_id() -> str:
            return f"sid{next(Node._ids)}"

    def __init__(self, target: RedisTarget, **kw) -> None:
        self.logger = logging.getLogger("tests.node")
        self.sent: list[tuple[str, object]] = []
        self.disconnected: list[str] = []
        self.changed = asyncio.Event()
        self.manager = RedisClientManager(target, **kw)
        self.manager.set_server(self)
        self.manager.initialize()

    def start_background_task(self, target, *args, **kwargs) -> asyncio.Task:
        return asyncio.ensure_future(target(*args, **kwargs))

    async def _send_eio_packet(self, eio_sid, pkt) -> None:
        self.sent.append((eio_sid, pkt.data))
        self.changed.set()

    async def _send_packet(self, eio_sid, pkt) -> None:
        self.sent.append((eio_sid, pkt))
        self.changed.set()

    async def disconnect(self, sid, namespace=None, ignore_queue=False) -> None:
        self.disconnected.append(sid)
        self.changed.set()

    async def session(self, eio_sid: str, *rooms: str) -> str:
        sid = await self.manager.connect(eio_sid, "/")
        for room in rooms:
            await self.manager.enter_room(sid, "/", room)
        return sid

    async def wait(self, pred, timeout: float = WAIT) -> None:
        async def run():
            while not pred():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(run(), timeout)

    async def listening(self, timeout: float = WAIT) -> None:
        async def run():
            while not self.manager.listening:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(run(), timeout)


async def nodes(target: RedisTarget, n: int = 2) -> list[Node]:
    out = [Node(target) for _ in range(n)]
    for node in out:
        await node.listening()
    return out


async def close(*ns: Node) -> None:
    for node in ns:
        await node.manager.close()


def events(node: Node) -> list[str]:
    """Event packets the node sent, as encoded text."""
    return [p for _, p in node.sent if isinstance(p, str)]


@pytest_asyncio.fixture(params=["redis", "sentinel", "cluster"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[RedisTarget]:
    if request.param == "redis":
        topo = request.getfixturevalue("redis_server")
        yield RedisTarget(url=topo.url, key_prefix=unique_prefix())
    elif request.param == "sentinel":
        topo = request.getfixturevalue("redis_sentinel")
        yield RedisTarget(url=topo.url, sentinel_hosts=topo.sentinel_hosts,
                          key_prefix=unique_prefix())
    else:
        topo = request.getfixturevalue("redis_cluster")
        yield RedisTarget(url=topo.url, cluster=True, key_prefix=unique_prefix())


async def test_emit_reaches_members_on_other_nodes(target: RedisTarget) -> None:
    a, b, c = await nodes(target, 3)
    try:
        assert a.manager.channel == f"{target.key_prefix}:socketio"
        sid_b = await b.session("eio-b", "room1")
        sid_c = await c.session("eio-c", "room2")
        await a.manager.emit("hello", {"n": 1}, namespace="/", room="room1")
        await b.wait(lambda: events(b))
        assert events(b) == ['2["hello",{"n":1}]']

        # several targets, and a sid as target, one packet per session
        await a.manager.emit("many", [1, 2], namespace="/", room=["room1", sid_c, "nobody"])
        await b.wait(lambda: len(events(b)) == 2)
        await c.wait(lambda: events(c))
        assert events(b)[1] == events(c)[0] == '2["many",[1,2]]'
        # everyone in the namespace
        await a.manager.emit("all", None, namespace="/")
        await b.wait(lambda: len(events(b)) == 3)
        await c.wait(lambda: len(events(c)) == 2)
        assert sid_b != sid_c
    finally:
        await close(a, b, c)


async def test_binary_payloads_cross_nodes(target: RedisTarget) -> None:
    a, b = await nodes(target)
    try:
        await b.session("eio-b", "doc")
        await a.manager.emit("update", {"blob": b"\x00\xffyjs"}, namespace="/", room="doc")
        await b.wait(lambda: b.sent)
        assert any(p == b"\x00\xffyjs" for _, p in b.sent)
    finally:
        await close(a, b)


async def test_rooms_without_a_local_member_stop_early(target: RedisTarget) -> None:
    a, b = await nodes(target)
    try:
        await b.session("eio-b", "here")
        for i in range(50):
            await a.manager.emit("elsewhere", {"i": i, "blob": b"x" * 100},
                                 namespace="/", room=f"room-{i}")
        await a.manager.emit("here", 1, namespace="/", room="here")
        await b.wait(lambda: b.sent)
        assert events(b) == ['2["here",1]']
        assert b.manager.stats["skipped_no_local_member"] == 50
        # the emitting node delivered its own part locally and skips its own messages
        assert a.manager.stats["skipped_no_local_member"] == 0
    finally:
        await close(a, b)


async def test_call_ack_comes_back_to_the_caller(target: RedisTarget) -> None:
    a, b = await nodes(target)
    try:
        sid = await b.session("eio-b")
        answered: asyncio.Future = asyncio.get_running_loop().create_future()
        await a.manager.emit("ask", {"q": 1}, namespace="/", room=sid,
                             callback=lambda *args: answered.set_result(args))
        await b.wait(lambda: b.sent)
        _, pkt = b.sent[0]
        assert pkt.data == ["ask", {"q": 1}] and pkt.id is not None
        # the client acks on node b; the answer reaches the callback on node a
        await b.manager.trigger_callback(sid, pkt.id, ["yes", 42])
        assert await asyncio.wait_for(answered, WAIT) == ("yes", 42)
    finally:
        await close(a, b)


async def test_room_changes_and_disconnects_cross_nodes(target: RedisTarget) -> None:
    a, b = await nodes(target)
    try:
        sid = await b.session("eio-b")
        await a.manager.enter_room(sid, "/", "joined-remotely")

        async def joined():
            while "joined-remotely" not in b.manager.rooms.get("/", {}):
                await asyncio.sleep(0.02)
        await asyncio.wait_for(joined(), WAIT)
        await a.manager.emit("in", 1, namespace="/", room="joined-remotely")
        await b.wait(lambda: events(b))

        await a.manager.leave_room(sid, "/", "joined-remotely")

        async def left():
            while "joined-remotely" in b.manager.rooms.get("/", {}):
                await asyncio.sleep(0.02)
        await asyncio.wait_for(left(), WAIT)

        await a.manager.disconnect(sid, "/")
        await b.wait(lambda: b.disconnected)
        assert b.disconnected == [sid]
    finally:
        await close(a, b)


async def test_control_messages_reach_the_other_nodes_in_order(target: RedisTarget) -> None:
    a, b = await nodes(target)
    try:
        plain: list[tuple[int, bool]] = []  # (i, run by the listener's own task)
        spawned: list[tuple[int, bool]] = []

        def on_plain(payload: dict) -> None:
            plain.append((payload["i"], asyncio.current_task() is b.manager.thread))
            b.changed.set()

        async def on_spawned(payload: dict) -> None:
            spawned.append((payload["i"], asyncio.current_task() is b.manager.thread))
            b.changed.set()

        for node in (a, b):
            node.manager.on_control("test:plain", on_plain if node is b else plain.append)
            node.manager.on_control("test:spawned", on_spawned if node is b else spawned.append)
        for i in range(200):
            await a.manager.publish_control("test:plain", {"i": i})
        await a.manager.publish_control("test:spawned", {"i": 0})
        await b.wait(lambda: len(plain) == 200 and spawned)
        # a plain function runs as its message is read, in the channel's order, in the
        # listener's task; a coroutine function in a task of its own; the sender's own
        # messages come back to it and are ignored there (a's handlers append no tuple)
        assert plain == [(i, True) for i in range(200)]
        assert spawned == [(0, False)]
    finally:
        await close(a, b)


async def test_initialize_starts_one_listener(target: RedisTarget) -> None:
    a, b = await nodes(target)
    try:
        b.manager.initialize()  # as python-socketio does at the first connection
        await b.session("eio-b", "room")
        await a.manager.emit("once", 1, namespace="/", room="room")
        await b.wait(lambda: b.sent)
        await asyncio.sleep(0.2)
        assert events(b) == ['2["once",1]']
    finally:
        await close(a, b)


async def test_prefixes_isolate_deployments(target: RedisTarget) -> None:
    other = RedisTarget(url=target.url, cluster=target.cluster,
                        sentinel_hosts=target.sentinel_hosts, key_prefix=unique_prefix())
    a, = await nodes(target, 1)
    b, = await nodes(other, 1)
    c, = await nodes(target, 1)
    try:
        await b.session("eio-b", "room")
        await c.session("eio-c", "room")
        await a.manager.emit("x", 1, namespace="/", room="room")
        await c.wait(lambda: c.sent)
        await asyncio.sleep(0.2)
        assert b.sent == [] and b.manager.stats["received"] == 0
    finally:
        await close(a, b, c)


async def test_ready_and_publish_when_redis_is_unreachable() -> None:
    target = RedisTarget(url=f"redis://127.0.0.1:{free_port()}/0", key_prefix="p",
                         connect_timeout=0.5)
    node = Node(target, backoff=(0.05, 0.2))
    try:
        with pytest.raises(StoreError, match="not connected"):
            await node.manager.ready()
        # the local part of an emit happens; the cross-node part is dropped, no exception
        await node.manager.emit("x", 1, namespace="/", room="r")
        assert node.manager.stats["publish_failed"] == 1

        async def retried() -> None:  # it keeps retrying, with a bounded backoff
            while node.manager.stats["listen_errors"] < 3:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(retried(), WAIT)
    finally:
        await close(node)


async def _until_delivered(a: Node, b: Node, room: str, timeout: float = 30.0) -> None:
    """Emit until b gets one: messages published while a listener reconnects are lost."""
    async def run():
        n = 0
        while not b.sent:
            n += 1
            await a.manager.emit("again", n, namespace="/", room=room)
            await asyncio.sleep(0.1)
    await asyncio.wait_for(run(), timeout)


async def test_delivery_resumes_after_a_redis_restart(tmp_path: Path) -> None:
    topo = start_standalone(tmp_path / "redis")
    try:
        target = RedisTarget(url=topo.url, key_prefix=unique_prefix(), connect_timeout=1)
        a, b = [Node(target, backoff=(0.05, 0.5)) for _ in range(2)]
        try:
            await a.listening()
            await b.listening()
            await b.session("eio-b", "room")
            topo.server.kill()
            await asyncio.sleep(0.3)
            assert not b.manager.listening
            with pytest.raises(StoreError):
                await b.manager.ready()
            await a.manager.emit("lost", 1, namespace="/", room="room")  # never raises
            topo.server.start()  # same port, empty
            await b.listening(timeout=10)
            await b.manager.ready()
            await _until_delivered(a, b, "room")
        finally:
            await close(a, b)
    finally:
        topo.stop()


async def test_delivery_resumes_after_a_sentinel_failover(redis_sentinel) -> None:
    target = RedisTarget(url=redis_sentinel.url, sentinel_hosts=redis_sentinel.sentinel_hosts,
                         key_prefix=unique_prefix(), connect_timeout=1)
    a, b = await nodes(target)
    try:
        await b.session("eio-b", "room")
        await _until_delivered(a, b, "room")
        b.sent.clear()
        await asyncio.to_thread(redis_sentinel.failover)
        await _until_delivered(a, b, "room")
    finally:
        await close(a, b)
        await asyncio.to_thread(redis_sentinel.wait_healthy)
