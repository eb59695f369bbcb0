"""`redis_conn.message_reader` on a real redis-server: what the pub/sub listeners read,
taken from hiredis's reader without redis-py's per-read layers, is what redis-py's own
`get_message` gives, in order, for bursts, large messages that arrive in pieces,
subscription changes and pongs; silence ends a read after its timeout."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from redis._parsers.hiredis import _AsyncHiredisParser

from rt.backends.redis_conn import RedisTarget, message_reader, subscriber

from .conftest import unique_prefix

pytestmark = pytest.mark.asyncio
WAIT = 5.0  # seconds any one read may take here


@pytest_asyncio.fixture
async def pair(redis_server) -> AsyncIterator[tuple[Any, Any, str]]:
    """(a publishing client, a subscribed PubSub, its channel)."""
    target = RedisTarget(url=redis_server.url, key_prefix=unique_prefix())
    pub, listener = target.client(), target.listener()
    pubsub = subscriber(listener)
    channel = target.keys().channel("reader")
    await pubsub.subscribe(channel)
    try:
        yield pub, pubsub, channel
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await pub.aclose()


async def next_of(read, kind: str, **kw: Any) -> dict[str, Any]:
    """The next message of `kind`, within WAIT."""
    async with asyncio.timeout(WAIT):
        while True:
            message = await read(timeout=1.0, **kw)
            if message is not None and message["type"] == kind:
                return message


async def test_the_lean_path_is_the_one_tested(pair) -> None:
    _, pubsub, _ = pair
    await next_of(message_reader(pubsub), "subscribe")
    # the appliance pins hiredis: the reader below takes hiredis's replies itself
    assert type(pubsub.connection._parser) is _AsyncHiredisParser


async def test_a_burst_arrives_whole_and_in_order(pair) -> None:
    pub, pubsub, channel = pair
    read = message_reader(pubsub)
    confirmed = await next_of(read, "subscribe")
    assert confirmed["channel"] == channel.encode()
    async with pub.pipeline(transaction=False) as pipe:
        for i in range(2000):
            pipe.publish(channel, b"m%d" % i)
        await pipe.execute()
    got = []
    async with asyncio.timeout(WAIT):
        while len(got) < 2000:
            message = await read(ignore_subscribe_messages=True, timeout=1.0)
            assert message is not None, f"silence after {len(got)} messages"
            got.append(message)
    assert [m["data"] for m in got] == [b"m%d" % i for i in range(2000)]
    assert {m["type"] for m in got} == {"message"}
    assert {m["channel"] for m in got} == {channel.encode()}
    assert {m["pattern"] for m in got} == {None}


async def test_a_large_message_read_in_pieces(pair) -> None:
    pub, pubsub, channel = pair
    read = message_reader(pubsub)
    await next_of(read, "subscribe")
    big = bytes(range(256)) * 8192  # 2 MiB: many socket reads
    await pub.publish(channel, big)
    await pub.publish(channel, b"after")
    assert (await next_of(read, "message"))["data"] == big
    assert (await next_of(read, "message"))["data"] == b"after"


async def test_subscription_changes_and_pongs_keep_redis_py_bookkeeping(pair) -> None:
    pub, pubsub, channel = pair
    read = message_reader(pubsub)
    await next_of(read, "subscribe")
    other = channel + ":other"
    await pubsub.subscribe(other)
    await pub.publish(other, b"x")
    confirmed = await next_of(read, "subscribe")
    assert confirmed["channel"] == other.encode()
    message = await next_of(read, "message")
    assert (message["channel"], message["data"]) == (other.encode(), b"x")
    await pubsub.ping(b"hello")
    pong = await next_of(read, "pong")
    assert pong["data"] == b"hello"
    await pubsub.unsubscribe(other)
    await next_of(read, "unsubscribe")
    assert other.encode() not in pubsub.channels  # redis-py's own state, kept
    # subscribe confirmations are dropped when asked
    await pubsub.subscribe(other)
    await pub.publish(other, b"y")
    message = await next_of(read, "message", ignore_subscribe_messages=True)
    assert message["data"] == b"y"


async def test_silence_ends_a_read_after_its_timeout(pair) -> None:
    _, pubsub, _ = pair
    read = message_reader(pubsub)
    await next_of(read, "subscribe")
    async with asyncio.timeout(WAIT):
        assert await read(timeout=0.2) is None
        assert await read(timeout=0.0) is None


async def test_a_closed_connection_raises(redis_server) -> None:
    target = RedisTarget(url=redis_server.url, key_prefix=unique_prefix())
    listener, admin = target.listener(), target.client()
    pubsub = subscriber(listener)
    channel = target.keys().channel("reader-kill")
    try:
        await pubsub.subscribe(channel)
        read = message_reader(pubsub)
        await next_of(read, "subscribe")
        host, port = pubsub.connection._writer.get_extra_info("sockname")[:2]
        assert await admin.client_kill_filter(addr=f"{host}:{port}") == 1
        with pytest.raises(Exception) as caught:  # noqa: PT011 - whatever redis-py raises
            async with asyncio.timeout(WAIT):
                while True:
                    await read(timeout=1.0)
        assert not isinstance(caught.value, TimeoutError), "the loss went unnoticed"
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await admin.aclose()
