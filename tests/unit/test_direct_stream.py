"""The direct-connection stream (rt/direct_stream.py) on fakeredis: which events it takes,
who may send them, the JSON open-webui reads, the order per session, and the refusals
that publish nothing. Against real Redis and real sockets: tests/integration/
test_direct_stream.py."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from rt import payloads as p
from rt.auth import Identity
from rt.backends.redis_conn import KeySpace
from rt.direct.service import DirectStream, RedisPublisher

pytestmark = pytest.mark.asyncio

ALICE = Identity("alice", "Alice", "user")
WAIT = 5.0


@pytest.fixture
def fake():
    fakeredis = pytest.importorskip("fakeredis")
    server = fakeredis.FakeServer()
    return server, fakeredis.FakeAsyncRedis(server=server)


async def listen(client, channel: str):
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    assert (await pubsub.get_message(timeout=WAIT))["type"] == "subscribe"
    return pubsub


async def next_message(pubsub) -> bytes:
    async def read() -> bytes:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WAIT)
            if message is not None:
                return message["data"]
    return await asyncio.wait_for(read(), WAIT)


@pytest.mark.parametrize("event, owner", [
    ("alice:sess:req", "alice"),
    ("0b1e:AbC_-x:9f2c-11", "0b1e"),
    ("alice:sess", None),  # two segments: an ordinary unknown event
    ("a:b:c:d", None),
    (":sess:req", None),
    ("alice::req", None),
    ("alice:sess:", None),
    ("alice:sess:" + "r" * 257, None),
    (7, None),
])
async def test_which_event_names_are_stream_events(event, owner):
    assert DirectStream.owner(event) == owner


async def test_without_redis_stream_events_are_refused_and_others_passed_on():
    stream = DirectStream(None)
    with pytest.raises(p.BadRequest, match="Redis"):
        await stream.handle("sid1", ALICE, "alice:sess:req", ("data: {}",))
    # an event of another shape is not the stream's: the caller answers it
    assert await stream.handle("sid1", ALICE, "no-such-event", ("x",)) is False
    # three segments that do not start with the sender's id: another user's stream
    with pytest.raises(p.Forbidden):
        await stream.handle("sid1", ALICE, "ydoc:document:other", ("x",))


async def test_published_as_open_webui_reads_it_in_arrival_order(fake):
    server, client = fake
    keys = KeySpace("owui")
    stream = DirectStream(RedisPublisher(client, keys, "fakeredis"))
    pubsub = await listen(client, "owui:direct_completion")
    lines = [f'data: {{"choices": [{{"delta": {{"content": "{i}"}}}}]}}' for i in range(20)]
    events = [("alice:s1:r1", (line,)) for line in lines] + [("alice:s1:r1", ({"done": True},))]
    # all at once on one session: published in the order they arrived
    taken = await asyncio.gather(*(stream.handle("sid1", ALICE, event, args)
                                   for event, args in events))
    assert taken == [True] * len(events)
    got = [orjson.loads(await next_message(pubsub)) for _ in events]
    assert got == [{"channel": "alice:s1:r1", "data": args[0]} for _, args in events]
    assert stream.published == len(events) and stream._turns == {}
    # extra arguments are not part of the message; integers beyond 64 bits are JSON too
    await stream.handle("sid1", ALICE, "alice:s1:r2", ({"n": 2**70}, "ignored"))
    assert await next_message(pubsub) == b'{"channel":"alice:s1:r2","data":{"n":%d}}' % 2**70
    await pubsub.aclose()


async def test_refusals_publish_nothing(fake):
    server, client = fake
    stream = DirectStream(RedisPublisher(client, KeySpace("owui"), "fakeredis"))
    pubsub = await listen(client, "owui:direct_completion")
    with pytest.raises(p.Forbidden, match="own user id"):
        await stream.handle("sid1", ALICE, "bob:s1:r1", ("data: stolen",))
    with pytest.raises(p.BadRequest, match="payload"):
        await stream.handle("sid1", ALICE, "alice:s1:r1", ())
    with pytest.raises(p.BadRequest, match="JSON"):
        await stream.handle("sid1", ALICE, "alice:s1:r1", (b"\x00binary",))
    # Redis gone: a retryable error for the sender, never a half-sent stream
    server.connected = False
    with pytest.raises(p.EventError) as refused:
        await stream.handle("sid1", ALICE, "alice:s1:r1", ("data: x",))
    assert refused.value.code == "internal" and stream._turns == {}
    server.connected = True
    await stream.handle("sid1", ALICE, "alice:s1:r1", ("data: after",))
    assert orjson.loads(await next_message(pubsub))["data"] == "data: after"
    assert stream.published == 1
    await pubsub.aclose()


async def test_for_backend_publishes_only_with_redis(fake, tmp_path):
    from rt.backends.factory import Backend
    from rt.backends.fanout import FanoutManager
    from rt.backends.memory import MemoryPresence, MemoryUsage
    from rt.backends.sqlite_store import SqliteStore

    server, client = fake

    def backend(redis) -> Backend:
        return Backend("test", SqliteStore(str(tmp_path / "db")), MemoryPresence(),
                       MemoryUsage(), FanoutManager(), redis=redis)

    on_redis = DirectStream.for_backend(backend(client), "pre")
    assert isinstance(on_redis.publisher, RedisPublisher)
    assert on_redis.publisher.channel == "pre:direct_completion"
    assert DirectStream.for_backend(backend(None), "pre").publisher is None
