"""The direct-connection stream end to end: a browser (python-socketio client) sends the
lines of a completion as `{user_id}:{session_id}:{request_id}` events to an appliance on
a real Redis, and a subscriber on `{prefix}:direct_completion` (where open-webui's backend
listens) receives them as open-webui publishes them, in order. Another user's stream and
a single node without Redis are refused with an `error` event and publish nothing."""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from rt import payloads as p
from rt.app import Appliance
from rt.backends.factory import build_redis_backend
from rt.backends.redis_conn import RedisTarget
from rt.direct.service import DirectStream
from tests.support.appliance import WAIT, Harness, running, settings_for
from tests.support.redis_servers import redis_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

FAST = "[limits]\nevents_per_second = 100000\nevents_burst = 100000\n"


def stream_of(app: Appliance) -> DirectStream:
    """The appliance's stream, offered every event the gateway does not know, the way the
    gateway's catch-all does it: taken by the stream, or refused like any unknown event."""
    stream = getattr(app.gateway, "direct_stream", None)
    if stream is not None:  # the gateway offers unknown events to it itself
        return stream
    stream = DirectStream.for_backend(app.backend, app.settings.state.key_prefix)
    gateway = app.gateway

    async def catch_all(event: str, sid: str, *args):
        identity = gateway.identities.get(sid)
        try:
            if identity is not None and await stream.handle(sid, identity, event, args):
                return None
        except p.EventError as exc:
            return gateway._fail(sid, event, exc)
        return await gateway.unknown_event(event, sid, *args)

    app.sio.on("*", catch_all)
    return stream


@contextlib.asynccontextmanager
async def on_redis(tmp_path: Path, url: str):
    prefix = f"rt-it-{uuid.uuid4().hex[:10]}"
    settings = settings_for(tmp_path, FAST, env={"REDIS_KEY_PREFIX": prefix})
    app = Appliance(settings, backend=build_redis_backend(
        settings, RedisTarget(url=url, key_prefix=prefix)))
    await app.start()
    h = Harness(app)
    try:
        yield h, prefix
    finally:
        await h.close()
        await app.stop()


async def received(pubsub, count: int) -> list[dict]:
    async def read() -> list[dict]:
        got = []
        while len(got) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WAIT)
            if message is not None:
                got.append(orjson.loads(message["data"]))
        return got
    return await asyncio.wait_for(read(), WAIT * 2)


async def test_a_completion_stream_reaches_open_webuis_channel_in_order(tmp_path, redis_server):
    async with on_redis(tmp_path, redis_server.url) as (h, prefix):
        stream = stream_of(h.app)
        listener = aioredis.from_url(redis_server.url)
        pubsub = listener.pubsub()
        await pubsub.subscribe(f"{prefix}:direct_completion")
        try:
            alice = await h.connect(await h.user("alice"))
            bob = await h.connect(await h.user("bob"))
            channel = f"alice:{alice.get_sid()}:req-1"
            lines = [f'data: {{"choices":[{{"delta":{{"content":"w{i} "}}}}]}}'
                     for i in range(50)] + ["data: [DONE]"]
            for line in lines:  # as the browser does: no acks, one after the other
                await alice.emit(channel, line)
            await alice.emit(channel, {"done": True})
            got = await received(pubsub, len(lines) + 1)
            assert got == [{"channel": channel, "data": line} for line in lines] + [
                {"channel": channel, "data": {"done": True}}]

            # bob may not feed alice's completion: refused, nothing published
            await bob.emit(channel, "data: forged")
            error = await bob.rec.wait_for("error")
            assert error["error"] == "forbidden" and error["event"] == channel
            # unknown events of other shapes are refused as before
            ack = await alice.call("no-such-event", {}, timeout=WAIT)
            assert ack["error"] == "bad_request" and "unknown event" in ack["message"]
            # a marker after the refusals: the forged line was never published
            await alice.emit(channel, "data: marker")
            assert await received(pubsub, 1) == [{"channel": channel, "data": "data: marker"}]
            assert stream.published == len(lines) + 2
        finally:
            await pubsub.aclose()
            await listener.aclose()


async def test_a_single_node_refuses_the_stream_saying_why(tmp_path):
    async with running(tmp_path, FAST) as h:
        stream_of(h.app)
        alice = await h.connect(await h.user("alice"))
        ack = await alice.call(f"alice:{alice.get_sid()}:req-1", "data: x", timeout=WAIT)
        assert ack["error"] == "bad_request" and "Redis" in ack["message"]
        await alice.emit(f"alice:{alice.get_sid()}:req-1", {"done": True})
        error = await alice.rec.wait_for("error")
        assert error["error"] == "bad_request" and "Redis" in error["message"]
