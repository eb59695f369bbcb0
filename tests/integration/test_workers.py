"""`[server] workers = N`: N worker processes behind one port, seen from outside.

Every test runs the real command (`appliance.py serve`) as a child process: its supervisor,
the broker it starts on embedded state (or a real Redis), the workers. Clients are real
python-socketio clients; a client's worker is the prefix of its Engine.IO sid. Polling
clients open a new connection per request (aiohttp's force_close), so that their requests
reach every worker and must be passed on to the session's own.
"""
from __future__ import annotations

import os
import re
import signal
import time
import uuid

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from rt.documents.yjs import EMPTY_UPDATE
from tests.integration.test_documents import Editor, PyReplica, api_text, setup_note
from tests.support.appliance import WAIT, ApplianceProcess, Client, Harness
from tests.support.redis_servers import free_port, redis_server  # noqa: F401 (fixture)
from tests.support.waits import until

pytestmark = pytest.mark.asyncio

WORKERS = "[server]\nworkers = 2\n[limits]\nevents_per_second = 100000\nevents_burst = 100000\n"
ENOUGH = 40  # clients tried before both workers must have been reached (2^-40 to fail)


def worker_of(client: Client) -> int:
    return int(client.eio.sid.split(".", 1)[0])


def worker_pids(proc: ApplianceProcess) -> dict[int, int]:
    """Worker index -> pid, from the "worker N: ready (pid P" lines so far (the latest)."""
    text = proc.log_path.read_text()
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+): ready \(pid (\d+)", text)}


def exists(path) -> bool:
    return os.path.exists(path)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


async def metrics(h: Harness, local: bool = False) -> dict[str, float]:
    """Every sample of /metrics by name{labels}."""
    headers = {"X-RT-Worker-Local": "1"} if local else None
    status, body = await h.api("GET", "/metrics", headers=headers)
    assert status == 200
    text = body.decode() if isinstance(body, bytes) else str(body)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def on_both_workers(h: Harness, users: list[str], **kw) -> list[Client]:
    """Connect a client per user, more if needed, until both workers hold one."""
    clients: list[Client] = []
    for n in range(ENOUGH):
        user = users[n % len(users)]
        clients.append(await h.connect(await h.user(user) if n < len(users) else h.token(user),
                                       **kw))
        if n + 1 >= len(users) and {worker_of(c) for c in clients} == {0, 1}:
            return clients
    raise AssertionError(f"{ENOUGH} clients all reached worker {worker_of(clients[0])}")


def polling_session() -> aiohttp.ClientSession:
    # a new connection per request: requests reach both workers
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


@pytest_asyncio.fixture
async def workers(tmp_path):
    """Starts the appliance; at the end its clients leave and, unless the test ended it
    itself, a graceful stop must end every process with exit 0."""
    started: list[tuple[ApplianceProcess, Harness]] = []

    def start(ini: str = WORKERS, env: dict | None = None) -> tuple[ApplianceProcess, Harness]:
        proc = ApplianceProcess(tmp_path / f"p{len(started)}", ini, env)
        proc.start(timeout=40)
        started.append((proc, Harness(None, f"http://127.0.0.1:{proc.port}")))
        return started[-1]

    yield start
    for proc, h in started:
        await h.close()
        try:
            if proc.proc is not None and proc.proc.poll() is None:
                assert proc.stop() == 0, proc.log_path.read_text()[-3000:]
        finally:
            proc.kill()


async def test_two_workers_share_fanout_presence_and_one_metrics_view(workers):
    proc, h = workers()
    assert "2 workers" in proc.output[0]
    assert set(worker_pids(proc)) == {0, 1}
    users = [f"u{i}" for i in range(4)]
    clients = await on_both_workers(h, users)
    for c in clients:
        await c.call("user-join", {}, timeout=WAIT)
    # one emit through the API (reaching either worker) reaches every client
    status, body = await h.api("POST", "/api/v1/emit", {
        "event": "events", "data": {"n": 1}, "to": {"users": users}})
    assert status == 202, body
    for c in clients:
        assert await c.rec.wait_for("events", lambda d: d == {"n": 1}) == {"n": 1}
    # a client emits to a channel: members on the other worker hear it
    assert (await h.api("PUT", "/api/v1/channels/ch", {"members": users}))[0] == 200
    sender = next(c for c in clients if worker_of(c) == 0)
    await sender.call("events:channel", {"channel_id": "ch", "data": {
        "type": "typing", "data": {"typing": True}}}, timeout=WAIT)
    others = [c for c in clients if worker_of(c) == 1]
    for c in others:
        await c.rec.wait_for("events:channel", lambda d: d.get("channel_id") == "ch")
    # the models in use are the box's: one worker's client uses one, the other's hear it
    await sender.emit("usage", {"model": "llama3", "chat_id": "c1"})
    for c in others:
        await c.rec.wait_for("usage", lambda d: d.get("models") == ["llama3"])
    for _ in range(4):  # asked of either worker
        assert (await h.api("GET", "/api/v1/usage"))[1] == {"models": ["llama3"]}
    # presence is the box's, not a worker's: every user is online from either worker
    for user in users:
        status, body = await h.api("GET", f"/api/v1/users/{user}/presence")
        assert status == 200 and body["online"], body
    # one /metrics: both workers' connections, counted once each
    async def gathered() -> bool:
        m = await metrics(h)
        return m.get("rt_workers") == 2 and m.get(
            "rt_connections{transport=websocket}") == len(clients)
    await until(gathered, what="a /metrics of both workers")
    m = await metrics(h)
    assert m["rt_users_online"] == len(users)  # cluster-wide: not doubled
    local = await metrics(h, local=True)
    assert "rt_workers" not in local
    assert local["rt_connections{transport=websocket}"] < len(clients)


async def test_a_separate_metrics_address_serves_every_worker(workers):
    port = free_port()
    proc, h = workers(WORKERS.replace("[server]\n", f"[server]\nmetrics_listen = 127.0.0.1:{port}\n"))
    metrics_only = Harness(None, f"http://127.0.0.1:{port}")
    await until(lambda: _workers_seen(metrics_only), what="both workers on metrics_listen")
    await metrics_only.close()
    assert (await h.api("GET", "/metrics"))[0] == 404  # moved off the main listener


async def _workers_seen(h: Harness) -> bool:
    return (await metrics(h)).get("rt_workers") == 2


async def test_polling_requests_reach_the_worker_holding_the_session(workers):
    proc, h = workers()
    token = await h.user("p1")
    listener = await h.connect(await h.user("p2"))
    await listener.call("user-join", {}, timeout=WAIT)
    session = polling_session()
    pollers = []
    for _ in range(3):
        c = Client(http_session=session)
        h.clients.append(c)
        await c.connect(h.url, socketio_path=h.path, transports=["polling"],
                        auth={"token": token}, wait_timeout=WAIT)
        pollers.append(c)
    for i, c in enumerate(pollers):
        assert await c.call("user-join", {}, timeout=WAIT) == {"id": "p1", "name": "P1"}
        for _ in range(5):  # acked events: each a POST, each answer a long-poll GET
            await c.call("heartbeat", {}, timeout=WAIT)
        status, _ = await h.api("POST", "/api/v1/emit", {
            "event": "events", "data": {"i": i}, "to": {"users": ["p1"]}})
        assert status == 202
        await c.rec.wait_for("events", lambda d, i=i: d == {"i": i})
    passed = (await metrics(h))['rt_worker_passed_on_total{kind=polling}']
    assert passed > 0, "no polling request reached the other worker"
    for c in pollers:
        await c.disconnect()
    await session.close()
    # upgrades from polling to websocket: a websocket that reaches the other worker
    # is handed to the session's worker, and the session goes on over it
    handed = 0
    for _ in range(ENOUGH):
        session = polling_session()
        c = Client(http_session=session)
        await c.connect(h.url, socketio_path=h.path, transports=["polling", "websocket"],
                        auth={"token": token}, wait_timeout=WAIT)
        await until(lambda c=c: c.eio.current_transport == "websocket",
                    what="the upgrade to websocket")
        assert await c.call("user-join", {}, timeout=WAIT) == {"id": "p1", "name": "P1"}
        await c.disconnect()
        await session.close()
        handed = (await metrics(h))["rt_worker_passed_on_total{kind=websocket}"]
        if handed:
            break
    assert handed > 0, f"{ENOUGH} upgrades all reached their session's own worker"


async def test_documents_converge_across_workers(workers):
    proc, h = workers()
    await setup_note(h, owner="x", write=["y"], read=["z"])
    clients = await on_both_workers(h, ["x", "y"])
    by_worker = {worker_of(c): c for c in clients}
    x = Editor(by_worker[0], PyReplica())
    y = Editor(by_worker[1], PyReplica())
    # the client on worker 0 may not be x's: join as whoever each client is
    await x.join()
    await y.join()
    await x.type(0, "from worker 0 ")
    await y.type(0, "from worker 1 ")
    expected = y.pull()
    await until(lambda: x.pull() == expected, what="worker 0's editor to converge")
    assert await api_text(h) == expected
    z = Editor(await h.connect(await h.user("z")), PyReplica())
    await z.join()
    assert z.pull() == expected


async def test_a_note_revoked_through_either_worker_is_left_on_both(workers):
    """The API call that edits a note's rights reaches one worker; the editors on the other
    must lose the document too (and the revoked writer's edits are refused there)."""
    proc, h = workers()
    await setup_note(h, owner="a", write=["c"])
    owners = await on_both_workers(h, ["a"])
    writers = []
    for _ in range(ENOUGH):  # writers "c" until both workers hold one
        c = Editor(await h.connect(await h.user("c")), PyReplica())
        await c.join()
        writers.append(c)
        if {worker_of(w.client) for w in writers} == {0, 1}:
            break
    assert {worker_of(w.client) for w in writers} == {0, 1}
    owner = Editor(owners[0], PyReplica())
    await owner.join()
    # rights taken away in one request, which reaches one worker: writers on both lose.
    # The other worker learns it from a control message through the broker, a moment
    # later: asked with an update that changes nothing (refused to readers only).
    await setup_note(h, owner="a", read=["c"])
    for w in writers:
        async def read_only(w=w) -> bool:
            return (await w.send(EMPTY_UPDATE)).get("error") == "forbidden"
        await until(read_only, what=f"worker {worker_of(w.client)} to know the revocation")
    for w in writers:
        ack = await w.send(PyReplica().insert(0, "x"))
        assert ack["error"] == "forbidden", (worker_of(w.client), ack)
    await owner.type(0, "still mine")
    assert await api_text(h) == "still mine"


async def test_sighup_reloads_every_worker(workers):
    proc, h = workers()
    async def origins_allowed(origin: str) -> set[int]:
        """Status codes of polling handshakes from `origin`, on fresh connections."""
        codes = set()
        async with polling_session() as session:
            for _ in range(16):
                async with session.get(f"{h.url}{h.path}/?EIO=4&transport=polling",
                                       headers={"Origin": origin}) as resp:
                    codes.add(resp.status)
        return codes

    assert await origins_allowed("https://other.example") == {200}
    proc.config.write_text(
        WORKERS.replace("[server]\n", "[server]\ncors_allow_origin = https://chat.example\n"))
    proc.proc.send_signal(signal.SIGHUP)
    await until(lambda: "every worker has reloaded" in proc.log_path.read_text(),
                what="both workers' reload")
    assert await origins_allowed("https://other.example") == {400}
    assert await origins_allowed("https://chat.example") == {200}


async def test_a_worker_that_dies_is_restarted_and_sigterm_drains_them_all(workers):
    proc, h = workers()
    clients = await on_both_workers(h, ["a", "b"])
    pids = worker_pids(proc)
    victim = [c for c in clients if worker_of(c) == 1]
    os.kill(pids[1], signal.SIGKILL)
    await until(lambda: worker_pids(proc).get(1) not in (None, pids[1]),
                timeout=20, what="worker 1 restarted")
    await until(lambda: all(not c.connected for c in victim), what="worker 1's clients cut")
    assert "worker 1 exited with -9" in proc.log_path.read_text()
    # the restarted worker serves: both workers answer again
    again = await on_both_workers(h, ["a", "b"])
    for c in again:
        await c.call("user-join", {}, timeout=WAIT)
    pids = worker_pids(proc)
    run_dir = re.search(r"unix://(\S+)/broker\.sock", proc.log_path.read_text())
    # graceful stop: every client told, every process gone, the broker saved its state
    started = time.monotonic()
    assert proc.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 15
    for c in again:
        await until(lambda c=c: not c.connected, what="a client disconnected by the drain")
    for pid in pids.values():
        assert not alive(pid)
    assert exists(proc.tmp_path / "data" / "workers-broker.rdb")
    assert run_dir and not exists(run_dir.group(1))


async def test_a_killed_supervisor_leaves_nothing_running(workers):
    proc, h = workers()
    pids = worker_pids(proc)
    broker = [int(p) for p in os.listdir("/proc") if p.isdigit()
              and _parent(int(p)) == proc.proc.pid and "valkey-server" in _cmdline(int(p))]
    assert len(broker) == 1 and len(pids) == 2
    proc.proc.kill()
    proc.proc.wait(10)
    for pid in [*pids.values(), *broker]:
        await until(lambda pid=pid: not alive(pid), timeout=10, what=f"pid {pid} gone")


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


async def test_workers_on_redis(workers, redis_server):
    prefix = f"rt-w-{uuid.uuid4().hex[:8]}"
    proc, h = workers(WORKERS + f"[state]\nmanager = redis\nredis_url = {redis_server.url}\n"
                      f"key_prefix = {prefix}\n")
    assert "redis; 2 workers" in proc.output[0]
    clients = await on_both_workers(h, ["r1", "r2"])
    for c in clients:
        await c.call("user-join", {}, timeout=WAIT)
    status, _ = await h.api("POST", "/api/v1/emit", {
        "event": "events", "data": {"r": 1}, "to": {"users": ["r1", "r2"]}})
    assert status == 202
    for c in clients:
        await c.rec.wait_for("events", lambda d: d == {"r": 1})
    # no broker of its own: the workers are two nodes of the Redis deployment
    assert "broker.sock" not in proc.log_path.read_text()
    status, body = await h.api("GET", "/admin/status.json")
    assert status == 200 and len(body["nodes"]) == 2, body
