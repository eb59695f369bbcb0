"""Inbound floods (issue 16): a client sending faster than its budget is slowed by TCP
backpressure (the appliance stops reading its socket, or answers its POST later), one that
keeps at it is closed with a reason and counted, undecodable input closes at once, and the
other clients' requests go on being answered meanwhile.

Real sockets throughout: the flooder is a raw websocket (frames written without waiting),
the other client python-socketio. The budgets are set small on the running engine so that
the cases take a second or two; no timing is asserted, only outcomes and counters.
"""
from __future__ import annotations

import asyncio
import dataclasses
import struct

import orjson
import pytest

from tests.support.appliance import WAIT, running
from tests.support.raw_ws import TEXT, Closed, RawWebSocket

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

TYPING = '42["events:channel",{"channel_id":"c1","data":{"type":"typing"}}]'
ECHO = "flood:echo"


def frame(text: str) -> bytes:
    """A masked client text frame; the zero mask keeps the payload as it is (the server
    unmasks whatever key it is given), so thousands are built cheaply."""
    payload = text.encode()
    size = len(payload)
    head = struct.pack("!BB", 0x80 | TEXT, 0x80 | size) if size < 126 else \
        struct.pack("!BBH", 0x80 | TEXT, 0x80 | 126, size)
    return head + b"\0\0\0\0" + payload


async def eventually(predicate, timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def budget(h, **changes) -> None:
    engine = h.app.sio.engine
    engine.options = dataclasses.replace(engine.options, **changes)


async def closed_by_server(ws: RawWebSocket, timeout: float) -> Closed:
    """Read (and drop) what the server sends until its close frame."""
    async def read() -> Closed:
        while True:
            try:
                await ws.recv()
            except Closed as closed:
                return closed
    return await asyncio.wait_for(read(), timeout)


async def test_flood_is_slowed_then_cut_while_others_are_answered(tmp_path):
    async with running(tmp_path) as h:
        budget(h, inbound_rate=100.0, inbound_burst=100, flood_close_after=1.5)
        engine = h.app.sio.engine
        flooder = await RawWebSocket.open(h.app.port, h.path, await h.user("flooder"))
        other = await h.connect(await h.user("other"))
        sent = 20_000
        flooder.writer.write(frame(TYPING) * sent)  # all at once, as the client did

        answered = 0
        closing = asyncio.ensure_future(closed_by_server(flooder, timeout=WAIT + 10))
        while not closing.done():
            # every request of the other client is answered while the flood goes on
            ack = await other.call("user-join", {}, timeout=WAIT)
            assert ack["id"] == "other"
            answered += 1
            await asyncio.sleep(0.05)  # a client within its budget
            if answered == 5:  # held again and again: the socket is read at the budget
                await eventually(lambda: engine.stats()["sessions_held"] == 1)
                assert engine.stats()["inbound_throttled"] >= 2
        closed = await closing
        assert (closed.code, closed.reason) == (1008, "inbound flood")
        stats = engine.stats()
        assert stats["flood_disconnects"] == 1 and stats["sessions_held"] == 0
        assert len(engine.sessions) == 1  # the other one
        # most of the flood was never read: it waited in the kernel and the client
        assert stats["messages_in"] < sent // 4
        assert answered >= 5
        await eventually(lambda: len(h.app.gateway.identities) == 1)  # the flooder's is gone
        assert await other.call("user-join", {}, timeout=WAIT)
        flooder.close()
        # and the operator sees it in /metrics
        status, body = await h.api("GET", "/metrics")
        text = body.decode() if isinstance(body, bytes) else str(body)
        assert status == 200
        assert 'rt_limited_total{limit="inbound_flood"} 1.0' in text
        assert 'rt_limited_total{limit="inbound_rate"}' in text


async def test_burst_above_the_budget_is_slowed_not_cut_nor_lost(tmp_path):
    async with running(tmp_path) as h:
        budget(h, inbound_rate=100.0, inbound_burst=20, flood_close_after=5.0)
        engine = h.app.sio.engine
        client = await RawWebSocket.open(h.app.port, h.path, await h.user("ann"))
        before = engine.stats()["messages_in"]
        count = 200
        client.writer.write(b"".join(frame(f'42{i}["{ECHO}",{i}]') for i in range(count)))
        h.app.sio.on(ECHO, lambda sid, n: n)
        await eventually(lambda: engine.stats()["inbound_throttled"] >= 1)
        acks = []
        while len(acks) < count:
            msg = await client.recv()
            assert isinstance(msg, str)
            if msg.startswith("43"):
                acks.append(orjson.loads(msg[msg.index("["):])[0])
        assert acks == list(range(count))  # every one, in order
        stats = engine.stats()
        assert stats["messages_in"] - before == count and stats["flood_disconnects"] == 0
        assert len(engine.sessions) == 1
        # reading again (a held socket would notice the client's going only when resumed)
        await eventually(lambda: engine.stats()["sessions_held"] == 0)
        client.close()
        await eventually(lambda: not engine.sessions)


async def test_polling_post_is_answered_once_its_packets_are_read(tmp_path):
    async with running(tmp_path) as h:
        budget(h, inbound_rate=100.0, inbound_burst=20, flood_close_after=5.0)
        h.app.sio.on(ECHO, lambda sid, n: n)
        engine = h.app.sio.engine
        base = f"{h.url}{h.path}/?EIO=4&transport=polling"
        resp = await h.http.fetch(base, request_timeout=WAIT)
        sid = orjson.loads(resp.body[1:])["sid"]
        url = f"{base}&sid={sid}"
        token = await h.user("poller")
        resp = await h.http.fetch(url, method="POST", request_timeout=WAIT,
                                  body="40" + orjson.dumps({"token": token}).decode())
        assert resp.body == b"ok"
        assert (await h.http.fetch(url, request_timeout=WAIT)).body.startswith(b"40")
        count = 150
        body = "\x1e".join(f'42{i}["{ECHO}",{i}]' for i in range(count))
        posting = asyncio.ensure_future(h.http.fetch(url, method="POST", body=body,
                                                     request_timeout=WAIT + 5))
        await eventually(lambda: engine.stats()["sessions_held"] == 1)
        assert not posting.done()  # the answer waits for the packets to be read
        assert (await asyncio.wait_for(posting, WAIT + 5)).body == b"ok"
        acks: list[int] = []
        while len(acks) < count:
            resp = await h.http.fetch(url, request_timeout=WAIT)
            acks += [orjson.loads(p[p.index("["):])[0]
                     for p in resp.body.decode().split("\x1e") if p.startswith("43")]
        assert acks == list(range(count))
        assert engine.stats()["flood_disconnects"] == 0


@pytest.mark.parametrize("garbage", ["7abc", "", '4{"x":', "44oops"])
async def test_garbage_closes_with_a_reason_and_is_counted(tmp_path, garbage):
    """An undecodable Engine.IO packet, or a malformed Socket.IO packet, closes with 1002
    "invalid packet" (the reference server closes too, without saying why)."""
    code = 1002
    async with running(tmp_path) as h:
        engine = h.app.sio.engine
        client = await RawWebSocket.open(h.app.port, h.path, await h.user("ann"))
        client.send(garbage)
        closed = await closed_by_server(client, WAIT)
        assert (closed.code, closed.reason) == (code, "invalid packet")
        assert engine.stats()["protocol_errors"] == 1
        await eventually(lambda: not engine.sessions)
        client.close()


async def test_engine_stats_names(tmp_path):
    async with running(tmp_path) as h:
        assert set(h.app.sio.engine.stats()) == {
            "messages_in", "slow_consumers", "protocol_errors", "flood_disconnects",
            "inbound_throttled", "inbound_backlogged", "sessions_held"}
