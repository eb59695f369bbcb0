"""Outbound backpressure (issues 7 and 8): a client that reads slowly gets every message in
order; one that stops reading is cut off at `max_outbound_bytes`, counted, and costs the
others nothing.

The slow clients are raw websockets with a small receive buffer, so the kernel's buffers
fill and the server's own buffering (the transport's write buffer) is exercised.
"""
import asyncio

import orjson
import pytest

from tests.support.appliance import WAIT, running
from tests.support.raw_ws import Closed, RawWebSocket

pytestmark = pytest.mark.asyncio


def event_of(message: str) -> list:
    """[name, data] of an event (connection state recovery may append its offset)."""
    assert message.startswith("42"), message[:40]
    return orjson.loads(message[2:])[:2]


async def eventually(predicate, timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_slow_reader_gets_every_message_in_order(tmp_path):
    async with running(tmp_path, "[limits]\nmax_outbound_bytes = 67108864\n") as h:
        tok = await h.user("slow")
        ws = await RawWebSocket.open(h.app.port, h.path, tok)
        filler = "x" * 20_000
        count = 400  # 8 MB: well past what the kernel buffers hold for this socket
        for i in range(count):
            await h.app.emitter.emit("bulk", {"i": i, "filler": filler}, users=["slow"])
        engine = h.app.sio.engine
        session = next(iter(engine.sessions.values()))
        # the kernel took only part: the rest waits in the server's buffer, not lost
        assert session.ws.unsent() > 0
        got = []
        while len(got) < count:
            name, data = event_of(await ws.recv())
            assert name == "bulk"
            got.append(data["i"])
            if len(got) % 50 == 0:
                await asyncio.sleep(0.01)  # a reader slower than the writer
        assert got == list(range(count))
        assert engine.slow_consumers == 0
        ws.close()


async def test_stalled_reader_is_cut_off_and_others_unaffected(tmp_path):
    async with running(tmp_path, "[limits]\nmax_outbound_bytes = 65536\n") as h:
        tok = await h.user("stuck")
        ws = await RawWebSocket.open(h.app.port, h.path, tok)  # then never reads again
        fine = await h.connect(tok)  # same user, a normal client that keeps reading
        received = []
        fine.on("bulk", lambda data: received.append(data["i"]))
        filler = "y" * 50_000
        count = 300  # 15 MB: past the kernel buffers and the 64 KiB allowance
        engine = h.app.sio.engine

        async def send(i: int) -> None:
            await h.app.emitter.emit("bulk", {"i": i, "filler": filler}, users=["stuck"])
            # paced by the reading client, which thus never has much unsent
            await eventually(lambda: len(received) == i + 1)

        sent = 0
        while engine.slow_consumers == 0:
            assert sent < count, "the stalled client was never cut off"
            await send(sent)
            sent += 1
        await eventually(lambda: len(h.app.gateway.identities) == 1)  # its disconnect ran
        # what it reads now (what the kernel held, then the rest of the server's buffer)
        # ends with the close frame that says why
        before_close = []
        with pytest.raises(Closed) as closed:
            while True:
                before_close.append(event_of(await ws.recv())[1]["i"])
        assert (closed.value.code, closed.value.reason) == (1008, "outbound buffer full")
        assert before_close == list(range(len(before_close)))  # a prefix, in order
        assert 0 < len(before_close) <= sent
        for i in range(sent, count):  # the others go on as before
            await send(i)
        assert received == list(range(count))
        assert engine.slow_consumers == 1
        status, _ = await h.api("GET", "/healthz", key=None)
        assert status == 200
        resp = await h.http.fetch(h.url + "/metrics", raise_error=False)
        assert b'rt_limited_total{limit="outbound_bytes"} 1.0' in resp.body
        ws.close()


async def test_polling_client_that_stops_collecting_is_cut_off(tmp_path):
    async with running(tmp_path, "[limits]\nmax_outbound_bytes = 65536\n") as h:
        tok = await h.user("poller")
        base = f"{h.url}{h.path}/?EIO=4&transport=polling"
        resp = await h.http.fetch(base)
        sid = orjson.loads(resp.body[1:])["sid"]
        resp = await h.http.fetch(f"{base}&sid={sid}", method="POST",
                                  body="40" + orjson.dumps({"token": tok}).decode())
        assert resp.body == b"ok"
        await eventually(lambda: len(h.app.gateway.identities) == 1)
        engine = h.app.sio.engine
        filler = "z" * 10_000
        for i in range(5):  # 50 KB waiting for a poll: within the allowance
            await h.app.emitter.emit("bulk", {"i": i, "filler": filler}, users=["poller"])
        assert engine.slow_consumers == 0 and sid in engine.sessions
        for i in range(5, 20):  # 200 KB for a client that never collects it
            await h.app.emitter.emit("bulk", {"i": i, "filler": filler}, users=["poller"])
        assert engine.slow_consumers == 1 and sid not in engine.sessions
        await eventually(lambda: not h.app.gateway.identities)  # its disconnect ran
        resp = await h.http.fetch(f"{base}&sid={sid}", raise_error=False)
        assert resp.code == 400 and orjson.loads(resp.body)["message"] == "Session ID unknown"


async def test_polling_queue_allowance_is_freed_by_polls(tmp_path):
    async with running(tmp_path, "[limits]\nmax_outbound_bytes = 65536\n") as h:
        tok = await h.user("poller")
        client = await h.connect(tok, transports=("polling",))
        received = []
        client.on("bulk", lambda data: received.append(data["i"]))
        filler = "w" * 10_000
        for i in range(30):  # 300 KB in all, but collected as it comes
            await h.app.emitter.emit("bulk", {"i": i, "filler": filler}, users=["poller"])
            await eventually(lambda: len(received) == i + 1)
        assert received == list(range(30))
        assert h.app.sio.engine.slow_consumers == 0
