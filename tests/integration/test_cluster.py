"""Cluster mode end to end: appliance processes sharing one Redis (standalone, Sentinel with
a failover, a three-master Cluster). A browser on node A and a backend call on node B must
behave exactly as on one node; a node that dies loses its sessions in bounded time; a Redis
restart is ridden out; an unreachable Redis stops start-up."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid

import pycrdt
import pytest

from rt.backends.redis_presence import NODE_TTL as NODE_LEASE
from tests.support.appliance import WAIT, ApplianceProcess, Harness
from tests.support.redis_servers import (  # noqa: F401 (fixtures)
    free_port,
    redis_cluster,
    redis_sentinel,
    redis_server,
    start_standalone,
)

pytestmark = pytest.mark.asyncio

NODE_TTL = 3.0
INI = f"[state]\nnode_ttl = {NODE_TTL}\n[log]\nlevel = warning\n"


def ini_with(node_ttl: float) -> str:
    return INI.replace(f"node_ttl = {NODE_TTL}", f"node_ttl = {node_ttl}")


def redis_env(topology, prefix: str) -> dict:
    env = {"WEBSOCKET_MANAGER": "redis", "WEBSOCKET_REDIS_URL": topology.url,
           "REDIS_KEY_PREFIX": prefix}
    if hasattr(topology, "sentinel_hosts"):
        env["WEBSOCKET_SENTINEL_HOSTS"] = ",".join(topology.sentinel_hosts)
    if type(topology).__name__ == "Cluster":
        env["WEBSOCKET_REDIS_CLUSTER"] = "true"
    return env


@contextlib.asynccontextmanager
async def nodes(tmp_path, topology, count: int = 2, ini: str = "", base: str = INI):
    prefix = f"rt-it-{uuid.uuid4().hex[:10]}"
    procs, harnesses = [], []
    try:
        for i in range(count):
            proc = ApplianceProcess(tmp_path / f"node{i}", base + ini,
                                    env=redis_env(topology, prefix))
            procs.append(proc)
            proc.start()
            harnesses.append(Harness(None, f"http://127.0.0.1:{proc.port}"))
        yield procs, harnesses
    finally:
        for h in harnesses:
            await h.close()
        for proc in procs:
            if proc.proc and proc.proc.poll() is None:
                proc.stop()


async def eventually(check, timeout: float = WAIT * 2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


def text_update(base: bytes | None, text: str, client_id: int) -> tuple[bytes, bytes]:
    doc = pycrdt.Doc(client_id=client_id)
    if base:
        doc.apply_update(base)
    before = doc.get_state()
    ytext = doc.get("content", type=pycrdt.Text)
    ytext += text
    return doc.get_update(before), doc.get_update()


async def cross_node_smoke(a: Harness, b: Harness) -> None:
    for uid in ("ann", "bob", "cat"):
        await a.user(uid, uid.title())
    assert (await b.api("PUT", "/api/v1/channels/ch", {"members": ["ann", "bob"]}))[0] == 200
    ann = await a.connect(a.token("ann"))
    bob = await b.connect(b.token("bob"), transports=("polling", "websocket"))
    cat = await a.connect(a.token("cat"))
    for client in (ann, bob, cat):
        assert "id" in await client.call("user-join", {}, timeout=WAIT)

    # typing on A reaches the member on B, with the name from the identity
    await ann.emit("events:channel", {"channel_id": "ch", "data": {"type": "typing"}})
    got = await bob.rec.wait_for("events:channel")
    assert got["user"] == {"id": "ann", "name": "Ann", "role": "user"}

    # a backend call on B reaches a user on A; a batch keeps its order across nodes
    batch = [{"event": "events", "data": {"i": i}, "to": {"users": ["ann"]}} for i in range(50)]
    assert (await b.api("POST", "/api/v1/emit/batch", batch))[0] == 202
    await ann.rec.wait_for("events", lambda d: d["i"] == 49)
    assert [d["i"] for d in ann.rec.of("events")] == list(range(50))

    # call from A to a session on B
    bob.on("ask", lambda data: {"answer": data["q"] + 1})
    status, body = await a.api("POST", "/api/v1/call", {"sid": bob.get_sid(), "event": "ask",
                                                         "data": {"q": 41}, "timeout_s": 5})
    assert (status, body) == (200, {"ack": {"answer": 42}})

    # membership changed through B moves cat's live session on A into the room
    await b.api("PATCH", "/api/v1/channels/ch/members", {"add": ["cat"]})
    await a.api("POST", "/api/v1/emit", {"event": "hello", "data": 1,
                                          "to": {"rooms": ["channel:ch"]}})
    for client in (ann, bob, cat):
        await client.rec.wait_for("hello")

    # presence is cluster-wide, and the status page lists both nodes
    status, body = await b.api("GET", "/api/v1/presence")
    assert {u["id"] for u in body["users"]} == {"ann", "bob", "cat"}
    status, body = await a.api("GET", "/admin/status.json")
    assert len(body["nodes"]) == 2 and sum(n["self"] for n in body["nodes"]) == 1

    # Yjs: editors on both nodes converge, updates that build on the other node's work are
    # accepted, and a late joiner gets everything
    await a.api("PUT", "/api/v1/notes/n1", {"owner": "ann", "write": ["bob", "cat"]})
    doc = "note:n1"
    assert (await ann.call("ydoc:document:join", {"document_id": doc}, timeout=WAIT))["ok"]
    assert (await bob.call("ydoc:document:join", {"document_id": doc}, timeout=WAIT))["ok"]
    u1, state1 = text_update(None, "hello ", 101)
    assert await ann.call("ydoc:document:update", {"document_id": doc, "update": list(u1)},
                          timeout=WAIT) == {"ok": True}
    relayed = await bob.rec.wait_for("ydoc:document:update")
    assert bytes(relayed["update"]) == u1 and relayed["user_id"] == "ann"
    u2, _ = text_update(state1, "world", 202)  # builds on ann's text
    assert await bob.call("ydoc:document:update", {"document_id": doc, "update": list(u2)},
                          timeout=WAIT) == {"ok": True}
    await ann.rec.wait_for("ydoc:document:update")
    late = await b.connect(b.token("cat"))
    assert (await late.call("ydoc:document:join", {"document_id": doc}, timeout=WAIT))["ok"]
    state = await late.rec.wait_for("ydoc:document:state")
    # the editors listed are those of the whole cluster, not of the joiner's node
    assert {ann.get_sid(), bob.get_sid(), late.get_sid()} <= set(state["sessions"])
    merged = pycrdt.Doc()
    merged.apply_update(bytes(state["state"]))
    assert str(merged.get("content", type=pycrdt.Text)) == "hello world"


async def test_two_nodes_on_standalone_redis(tmp_path, redis_server):
    async with nodes(tmp_path, redis_server) as (procs, (a, b)):
        await cross_node_smoke(a, b)


async def test_two_nodes_on_a_redis_cluster(tmp_path, redis_cluster):
    async with nodes(tmp_path, redis_cluster) as (procs, (a, b)):
        await cross_node_smoke(a, b)


async def test_sentinel_with_a_failover(tmp_path, redis_sentinel):
    async with nodes(tmp_path, redis_sentinel) as (procs, (a, b)):
        await cross_node_smoke(a, b)
        ann = a.clients[0]
        await asyncio.get_running_loop().run_in_executor(None, redis_sentinel.failover)

        async def delivered():
            marker = uuid.uuid4().hex
            await b.api("POST", "/api/v1/emit", {"event": "after", "data": marker,
                                                  "to": {"users": ["ann"]}})
            await asyncio.sleep(0.3)
            return marker in ann.rec.of("after")
        await eventually(delivered, 30, "delivery across nodes after the failover")
        assert all(p.proc.poll() is None for p in procs)
        # the directory written before the failover is still there
        assert (await b.api("GET", "/api/v1/users/ann"))[0] == 200


async def test_killed_node_sessions_vanish_from_presence(tmp_path, redis_server):
    async with nodes(tmp_path, redis_server) as (procs, (a, b)):
        await a.user("ann")
        await a.user("bob", "Bob")
        ann = await a.connect(a.token("ann"))
        bob = await b.connect(b.token("bob"))
        await a.api("PUT", "/api/v1/notes/n1", {"owner": "ann", "write": ["bob"]})
        for client in (ann, bob):
            assert (await client.call("ydoc:document:join", {"document_id": "note:n1"},
                                      timeout=WAIT))["ok"]

        async def online():
            _, body = await a.api("GET", "/api/v1/presence")
            return {u["id"] for u in body["users"]}
        assert await online() == {"ann", "bob"}
        killed_at = time.monotonic()
        procs[1].kill()  # SIGKILL: no goodbye

        async def bob_gone():
            return await online() == {"ann"}
        await eventually(bob_gone, NODE_TTL * 4, "the dead node's sessions to vanish")
        # bounded by the node lease and the sweep interval, not forever
        assert time.monotonic() - killed_at < NODE_TTL * 4
        # the other editors are told, like a normal leave
        left = await ann.rec.wait_for("ydoc:user:left", timeout=NODE_TTL * 2)
        assert left["user_id"] == "bob" and left["user_name"] == "Bob"


async def test_a_sigkilled_nodes_users_leave_within_15_s(tmp_path, redis_server):
    # issue 16: with the node lease the appliance uses by default (redis_presence.NODE_TTL),
    # a node killed without a goodbye loses its users on the other nodes within 15 s
    async with nodes(tmp_path, redis_server, base=ini_with(NODE_LEASE)) as (procs, (a, b)):
        await a.user("ann")
        await a.user("bob", "Bob")
        ann = await a.connect(a.token("ann"))
        await b.connect(b.token("bob"))
        assert "id" in await ann.call("user-join", {}, timeout=WAIT)

        async def online():
            _, body = await a.api("GET", "/api/v1/presence")
            return {u["id"] for u in body["users"]}
        await eventually(lambda: _equals(online, {"ann", "bob"}), WAIT, "both users online")
        killed_at = time.monotonic()
        procs[1].kill()  # SIGKILL

        await eventually(lambda: _equals(online, {"ann"}), 25, "the dead node's user to leave")
        gone_after = time.monotonic() - killed_at
        assert gone_after <= 15, f"bob left {gone_after:.1f} s after the kill"


async def _equals(read, expected) -> bool:
    return await read() == expected


async def test_redis_restart_is_ridden_out(tmp_path):
    topo = start_standalone(tmp_path / "redis", ["appendonly yes", "appendfsync always"])
    try:
        async with nodes(tmp_path, topo) as (procs, (a, b)):
            await a.user("ann")
            ann = await a.connect(a.token("ann"))
            topo.server.kill(signal.SIGKILL)

            async def not_ready():
                return (await a.api("GET", "/readyz", key=None))[0] == 503
            await eventually(not_ready, 15, "readyz 503 while Redis is down")
            assert ann.connected  # local traffic goes on
            topo.server.restart()

            async def delivered():
                marker = uuid.uuid4().hex
                await b.api("POST", "/api/v1/emit", {"event": "back", "data": marker,
                                                      "to": {"users": ["ann"]}})
                await asyncio.sleep(0.3)
                return marker in ann.rec.of("back")
            await eventually(delivered, 30, "cross-node delivery after the restart")
            await eventually(lambda: _ready(a), 15, "readyz 200 again")
            assert all(p.proc.poll() is None for p in procs)
            assert (await b.api("GET", "/api/v1/users/ann"))[0] == 200  # persisted by Redis
    finally:
        topo.stop()


async def _ready(h: Harness) -> bool:
    return (await h.api("GET", "/readyz", key=None))[0] == 200


async def test_unreachable_redis_stops_start_up(tmp_path):
    env = {"WEBSOCKET_MANAGER": "redis",
           "WEBSOCKET_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = ApplianceProcess(tmp_path, INI, env=env)
    with pytest.raises(AssertionError, match="did not start"):
        proc.start(timeout=30)
    assert proc.proc.returncode not in (0, None)
    log = proc.log_path.read_text()
    assert "cannot start" in log and "127.0.0.1" in log


async def test_chat_stream_across_nodes_and_cancel_from_another_node(tmp_path, redis_server):
    from tests.integration.test_relay import (
        Upstream,
        chat_body,
        is_final,
        post_chat,
        progress,
        stalls_after,
    )
    async with Upstream(stalls_after(["Once upon"])) as up:
        upstream = f"[upstream]\nbase_url = {up.base_url}\nemit_interval = 0\n"
        async with nodes(tmp_path, redis_server, ini=upstream) as (procs, (a, b)):
            token = await a.user("ann", "Ann")
            tab = await b.connect(b.token("ann"))  # the user's tab is on node B
            caller = asyncio.ensure_future(post_chat(a, token, chat_body("m1")))  # A
            await tab.rec.wait_for("events", lambda ev: progress(tab, "m1") == ["Once upon"])
            # the cancel reaches node B; node A, which streams, stops the upstream
            status, body = await b.api("POST", "/api/chat/completions/m1/cancel", key=token)
            assert (status, body["status"]) == (202, "cancel requested")
            final = await tab.rec.wait_for("events", is_final("m1"))
            assert final["data"]["data"]["cancelled"] is True
            await asyncio.wait_for(up.requests[0].disconnected.wait(), WAIT)
            assert (await asyncio.wait_for(caller, WAIT)).code == 200
            # the stored message is readable on any node
            status, body = await b.api("GET", "/api/v1/chats/chat1/messages/m1")
            assert status == 200 and body["status"] == "cancelled"
            assert body["content"] == "Once upon"


async def test_usage_across_nodes_caps_coalescing_and_final_set(tmp_path, redis_server):
    """Usage (issue 8) in cluster mode: the caps hold cluster-wide, a storm of changes made
    on both nodes reaches observers on both as a bounded number of `usage` messages, and
    the last message each observer gets carries the final set."""
    ini = "[limits]\nusage_ttl = 30\nusage_models_max = 50\n"  # nothing expires meanwhile
    async with nodes(tmp_path, redis_server, ini=ini) as (procs, (a, b)):
        await a.user("ann")
        observers = [await a.connect(a.token("ann")), await b.connect(b.token("ann"))]
        senders = [await (a if i % 2 else b).connect(a.token("ann")) for i in range(8)]
        models = sorted(f"model-{i:02d}" for i in range(50))
        started = time.monotonic()
        for i, m in enumerate(models):  # a storm over about half a second, on both nodes
            await senders[i % 8].emit("usage", {"model": m})
            await asyncio.sleep(0.01)
        for o in observers:
            await o.rec.wait_for("usage", lambda d: len(d["models"]) == 50, timeout=WAIT * 2)
        # the set is full: a new model is refused on either node (the cap is cluster-wide)
        for s in senders[:2]:
            ack = await s.call("usage", {"model": "one-too-many"}, timeout=WAIT)
            assert ack["error"] == "rate_limited"
        # a broadcast still pending goes out within an interval (a re-check one more):
        # wait that long, then an API emit through each node as a barrier
        await asyncio.sleep(2.5)
        elapsed = time.monotonic() - started
        for h in (a, b):
            marker = uuid.uuid4().hex
            await h.api("POST", "/api/v1/emit", {"event": "barrier", "data": marker,
                                                  "to": {"all": True}})
            for o in observers:
                await o.rec.wait_for("barrier", lambda d, m=marker: d == m, timeout=WAIT)
        bound = 2 * (3 + int(elapsed))  # per node: leading, one per second, a re-check
        for o in observers:
            got = o.rec.of("usage")
            assert 1 <= len(got) <= bound < 50, (len(got), elapsed)
            assert got[-1] == {"models": models}
            assert not any("one-too-many" in d["models"] for d in got)
        for h in (a, b):
            assert (await h.api("GET", "/api/v1/usage"))[1] == {"models": models}
