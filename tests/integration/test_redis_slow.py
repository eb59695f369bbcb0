"""A slow or silent Redis in cluster mode (issue 8), slower than a failure: no error, no
close, just no answer (or a late one).

Node A reaches a real redis-server through `StallProxy` (tests/support/stall_proxy.py),
node B reaches it directly; both are appliance processes on one key prefix, A with a short
`[state] redis_timeout`. While the proxy black-holes A's traffic, A must answer every call
in bounded time with a clear error (API 503 with a JSON error, readyz 503, an error in the
ack of an event that needs Redis) and stay responsive (healthz); once traffic flows again
it works without a restart, its pub/sub listener included, which finds its dead connection
by its own PING (the proxy keeps black-holed connections dead). A delay below the timeout
only makes things slower. Nothing acknowledged is lost, and nothing refused is kept.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid

import pycrdt
import pytest
import socketio

from tests.integration.test_cluster import text_update
from tests.support.appliance import WAIT, ApplianceProcess, Harness
from tests.support.redis_servers import redis_server  # noqa: F401 (fixture)
from tests.support.stall_proxy import StallProxy

pytestmark = pytest.mark.asyncio

TIMEOUT = 1.0  # [state] redis_timeout of node A
BOUND = TIMEOUT + 1.5  # what a caller may wait: the timeout and scheduling margin (2 cores)
# each way: a round trip takes 100 ms, a command on a fresh connection 500 ms (redis-py's
# handshake, HELLO and two CLIENT SETINFO, and a health-check PING come first)
DELAY_MS = 50
INI = f"[state]\nredis_timeout = {TIMEOUT:g}\n[log]\nlevel = info\n"
DOC = "note:n1"


@pytest.fixture
def proxy(redis_server):  # noqa: F811
    with StallProxy(redis_server.server.port) as p:
        yield p


@contextlib.asynccontextmanager
async def two_nodes(tmp_path, redis, proxy: StallProxy):
    """(process A, harness A, harness B): A through the proxy, B straight to Redis."""
    prefix = f"rt-slow-{uuid.uuid4().hex[:10]}"
    procs, harnesses = [], []
    try:
        for name, url in (("a", proxy.url), ("b", redis.url)):
            proc = ApplianceProcess(tmp_path / name, INI, env={
                "WEBSOCKET_MANAGER": "redis", "WEBSOCKET_REDIS_URL": url,
                "REDIS_KEY_PREFIX": prefix})
            procs.append(proc)
            proc.start()
            harnesses.append(Harness(None, f"http://127.0.0.1:{proc.port}"))
        yield procs[0], harnesses[0], harnesses[1]
    finally:
        proxy.pass_through()  # new connections work again: A can retire its sessions
        for h in harnesses:
            await h.close()
        for proc in procs:
            if proc.proc and proc.proc.poll() is None:
                proc.stop()


def log_text(proc: ApplianceProcess) -> str:
    return proc.log_path.read_text(errors="replace") if proc.log_path else ""


def log_of(proc: ApplianceProcess) -> str:
    """For assertion messages: the end of node A's log (the harness writes it to a file)."""
    return f"\n--- log of node A ({proc.log_path}) ---\n{log_text(proc)[-12000:]}"


async def timed(aw):
    """(result, seconds); the test itself never waits unbounded."""
    start = time.monotonic()
    result = await asyncio.wait_for(aw, BOUND * 4)
    return result, time.monotonic() - start


async def eventually(check, timeout: float, what: str, proc: ApplianceProcess):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s{log_of(proc)}")


async def delivered(sender: Harness, client, user: str, proc: ApplianceProcess,
                    timeout: float = 15.0) -> None:
    """Emit through `sender`'s API to `user` until `client` gets one (what is published
    while a listener reconnects is lost: that is pub/sub)."""
    async def got() -> bool:
        marker = uuid.uuid4().hex
        status, _ = await sender.api("POST", "/api/v1/emit", {
            "event": "mark", "data": marker, "to": {"users": [user]}})
        await asyncio.sleep(0.2)
        return status == 202 and marker in client.rec.of("mark")
    await eventually(got, timeout, f"an emit through {sender.url} reaching {user}", proc)


async def ready(h: Harness) -> bool:
    return (await h.api("GET", "/readyz", key=None))[0] == 200


async def stored_text(h: Harness) -> str:
    status, body = await h.api("GET", f"/api/v1/documents/{DOC}")
    assert status == 200, body
    doc = pycrdt.Doc()
    doc.apply_update(base64.b64decode(body["state_b64"]))
    return str(doc.get("content", type=pycrdt.Text))


async def test_black_hole_fails_fast_and_heals_without_restart(tmp_path, redis_server, proxy):
    async with two_nodes(tmp_path, redis_server, proxy) as (proc, a, b):
        for uid in ("ann", "bob"):
            await a.user(uid)
        assert (await a.api("PUT", f"/api/v1/notes/{DOC[5:]}", {"owner": "ann"}))[0] == 200
        ann = await a.connect(a.token("ann"))  # on A, behind the proxy
        bob = await b.connect(b.token("bob"))  # on B
        assert (await ann.call("user-join", {}, timeout=WAIT))["id"] == "ann"
        assert (await ann.call("ydoc:document:join", {"document_id": DOC}, timeout=WAIT))["ok"]
        update, state = text_update(None, "kept", 7)
        assert await ann.call("ydoc:document:update", {"document_id": DOC,
                                                       "update": list(update)},
                              timeout=WAIT) == {"ok": True}, log_of(proc)
        await delivered(b, ann, "ann", proc)  # both listeners work
        await delivered(a, bob, "bob", proc)

        proxy.black_hole()
        # every API call that needs Redis: a 503 with a JSON error, in bounded time (the
        # emit reached A's sessions; its way to B is what failed, and the caller hears so)
        for method, path, body in [
                ("GET", "/api/v1/presence", None),
                ("GET", "/api/v1/users/ann", None),
                ("PUT", "/api/v1/users/cat", {"name": "Cat"}),
                ("POST", "/api/v1/emit", {"event": "x", "data": 1, "to": {"users": ["bob"]}}),
                ("POST", "/api/v1/emit/batch", [{"event": "x", "data": 2,
                                                 "to": {"users": ["bob"]}}] * 2)]:
            (status, reply), took = await timed(a.api(method, path, body))
            assert status == 503 and reply["error"] == "unavailable", \
                (method, path, status, reply, log_of(proc))
            assert took < BOUND, (method, path, f"{took:.2f} s", log_of(proc))
        assert "no answer within 1 s" in reply["message"], reply

        # the event loop stays free while a request waits for Redis
        stalled = asyncio.ensure_future(a.api("GET", "/api/v1/presence"))
        await asyncio.sleep(0.2)
        (status, _), took = await timed(a.api("GET", "/healthz", key=None))
        assert status == 200 and took < 0.5 and not stalled.done(), (took, log_of(proc))
        assert (await asyncio.wait_for(stalled, BOUND))[0] == 503

        (status, reply), took = await timed(a.api("GET", "/readyz", key=None))
        assert status == 503 and "no answer within" in reply["reason"], (reply, log_of(proc))
        assert took < BOUND, (f"readyz took {took:.2f} s", log_of(proc))

        # events that need Redis: an error in the ack, in bounded time; the session stays
        ack, took = await timed(ann.call("user-join", {}, timeout=BOUND * 2))
        assert "error" in ack and took < BOUND, (ack, f"{took:.2f} s", log_of(proc))
        # a fault of ours the client may retry, logged in one line (not as a bug)
        assert ack["message"] == "the store is unavailable, try again", ack
        assert "event user-join from" in log_text(proc)
        assert "Traceback" not in log_text(proc).split("event user-join from")[-1][:400]
        lost, _ = text_update(state, " lost", 8)
        ack, took = await timed(ann.call("ydoc:document:update", {
            "document_id": DOC, "update": list(lost)}, timeout=BOUND * 2))
        assert "error" in ack and took < BOUND, (ack, f"{took:.2f} s", log_of(proc))
        assert ann.connected and proc.proc.poll() is None, log_of(proc)

        proxy.pass_through()
        # readyz 200 needs the store and the pub/sub listener: the listener found its
        # black-holed connection dead by itself (no error ever arrives on it) and resubscribed
        await eventually(lambda: ready(a), 20, "readyz 200 after the stall", proc)
        assert "pub/sub lost" in log_text(proc), log_of(proc)
        await delivered(b, ann, "ann", proc, timeout=5)  # B -> A: A's listener
        await delivered(a, bob, "bob", proc, timeout=5)  # A -> B: A's publisher
        again = await a.connect(a.token("ann"))
        assert (await again.call("user-join", {}, timeout=WAIT))["id"] == "ann", log_of(proc)
        assert (await a.api("PUT", "/api/v1/users/cat", {"name": "Cat"}))[0] == 200
        # what was acknowledged before the stall is there (read on B, from Redis); the
        # refused update is not
        assert (await b.api("GET", "/api/v1/users/ann"))[0] == 200
        assert await stored_text(b) == "kept", log_of(proc)
        assert proc.proc.poll() is None, log_of(proc)


async def test_delay_below_the_timeout_is_only_slower(tmp_path, redis_server, proxy):
    async with two_nodes(tmp_path, redis_server, proxy) as (proc, a, b):
        for uid in ("ann", "bob"):
            await b.user(uid)
        bob = await b.connect(b.token("bob"))
        assert (await b.api("PUT", f"/api/v1/notes/{DOC[5:]}", {"owner": "ann"}))[0] == 200

        proxy.delay(DELAY_MS)
        (status, _), took = await timed(a.api("PUT", "/api/v1/users/cat", {"name": "Cat"}))
        assert status == 200, log_of(proc)
        assert took >= 2 * DELAY_MS / 1000, f"the delay did not apply ({took:.2f} s)"
        ann = await a.connect(a.token("ann"))  # a new connection, nothing refused
        assert (await ann.call("user-join", {}, timeout=WAIT))["id"] == "ann", log_of(proc)
        assert (await ann.call("ydoc:document:join", {"document_id": DOC}, timeout=WAIT))["ok"]
        update, _ = text_update(None, "slow", 9)
        assert await ann.call("ydoc:document:update", {"document_id": DOC,
                                                       "update": list(update)},
                              timeout=WAIT) == {"ok": True}, log_of(proc)
        # the listener's PING is answered in time: it stays subscribed through the delay
        await asyncio.sleep(TIMEOUT * 2.5)
        assert await ready(a), log_of(proc)
        await delivered(b, ann, "ann", proc, timeout=5)
        await delivered(a, bob, "bob", proc, timeout=5)
        status, body = await a.api("GET", "/api/v1/presence")
        assert status == 200 and {u["id"] for u in body["users"]} == {"ann", "bob"}, body
        # acknowledged through the slow path, so in Redis (read on B)
        assert (await b.api("GET", "/api/v1/users/cat"))[1]["name"] == "Cat"
        assert await stored_text(b) == "slow", log_of(proc)
        # nothing timed out, in the background tasks either
        assert "pub/sub lost" not in log_text(proc), log_of(proc)
        assert "no answer within" not in log_text(proc), log_of(proc)


async def test_connect_during_a_stall_is_refused_with_a_reason(tmp_path, redis_server, proxy):
    async with two_nodes(tmp_path, redis_server, proxy) as (proc, a, b):
        await a.user("ann")
        proxy.black_hole()
        client = socketio.AsyncClient(reconnection=False)
        refusals: list = []
        client.on("connect_error", refusals.append)
        with contextlib.suppress(socketio.exceptions.ConnectionError):
            await client.connect(a.url, socketio_path=a.path, transports=["websocket"],
                                 auth={"token": a.token("ann")}, wait_timeout=BOUND)
        await client.disconnect()
        assert refusals, f"no refusal within {BOUND} s{log_of(proc)}"
        assert refusals[0]["message"] == "unavailable", refusals
        assert proc.proc.poll() is None
        proxy.pass_through()
        await eventually(lambda: ready(a), 20, "readyz 200 after the stall", proc)
        ann = await a.connect(a.token("ann"))  # nothing of the refused attempt is in the way
        assert (await ann.call("user-join", {}, timeout=WAIT))["id"] == "ann", log_of(proc)
