"""Soak: a bounded long run against a real appliance process, then a check that everything
the load created went away again (issue 8).

    python soak/soak.py --minutes 5 --clients 1000      # full run (make soak)
    python soak/soak.py --seconds 25 --clients 150      # the short CI version

Load, in waves until the time is up: clients connect (websocket and polling), join their
channels, send heartbeats and typing events, receive API emits, edit their team's shared Yjs
note (when the appliance has documents), then a share of them disconnects and others connect
(churn). The clients run in `--workers` processes (2): one Python process cannot read what a
thousand clients are sent, and its own timeouts would be counted as the server's errors.
After the last client has left the appliance must be back at its baseline: no sessions,
rooms, presence entries or usage entries; asyncio tasks back to the idle count; resident
memory within a bound of the warmed-up baseline. The figures are printed as a table.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import orjson
import socketio
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rt.auth import TokenVerifier  # noqa: E402
from tests.support.appliance import API_KEY, SECRET, ApplianceProcess  # noqa: E402

CHANNELS = 20


class Soak:
    def __init__(self, url: str, clients: int, seconds: float, seed: int = 7):
        self.url = url
        self.clients = clients
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.http = AsyncHTTPClient(force_instance=True, max_clients=50)
        self.verifier = TokenVerifier(SECRET)
        self.received = 0
        self.sent = 0
        self.errors: list[str] = []

    async def api(self, method: str, path: str, body=None):
        req = HTTPRequest(self.url + path, method=method, body=orjson.dumps(body) if body is not None else None,
                          headers={"Authorization": f"Bearer {API_KEY}"}, request_timeout=30,
                          allow_nonstandard_methods=True)
        resp = await self.http.fetch(req, raise_error=False)
        return resp.code, (orjson.loads(resp.body) if resp.body else None)

    async def metrics(self) -> dict[str, float]:
        resp = await self.http.fetch(self.url + "/metrics")
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(resp.body.decode()):
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                key = s.name + (("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}")
                                if s.labels else "")
                out[key] = s.value
        return out

    async def setup(self) -> None:
        users = [f"u{i}" for i in range(self.clients)]
        for uid in users:
            status, _ = await self.api("PUT", f"/api/v1/users/{uid}", {"name": uid.upper()})
            assert status == 200
        # one channel and one shared note per team of clients/CHANNELS users: what a
        # deployment looks like, and what Python clients on the same 2 cores can read
        # (one note edited by everybody would send each edit, join and leave to all of them)
        for c in range(CHANNELS):
            members = users[c::CHANNELS]
            await self.api("PUT", f"/api/v1/channels/ch{c}", {"members": members})
            await self.api("PUT", f"/api/v1/notes/soak{c}", {"owner": members[0],
                                                              "write": members})

    async def one_client(self, i: int, stop_at: float) -> None:
        uid = f"u{i}"
        transports = ["websocket"] if i % 4 else ["polling", "websocket"]
        client = socketio.AsyncClient(reconnection=False)

        def count(*_args):
            self.received += 1
        client.on("*", count)
        stage = "connect"
        try:
            await client.connect(self.url, socketio_path="/ws/socket.io", transports=transports,
                                 auth={"token": self.verifier.issue(uid, 3600)}, wait_timeout=30)
            stage = "user-join"
            await client.call("user-join", {}, timeout=30)
            doc = f"note:soak{i % CHANNELS}"
            stage = "document join"
            joined = await client.call("ydoc:document:join", {"document_id": doc}, timeout=30)
            has_docs = isinstance(joined, dict) and joined.get("ok")
            # stay for a random share of the run, then leave (churn)
            leave_at = min(stop_at, time.monotonic() + self.rng.uniform(2, max(3, self.seconds / 2)))
            while time.monotonic() < leave_at:
                stage = "events"
                await client.emit("heartbeat", {})
                if self.rng.random() < 0.1:
                    await client.emit("events:channel", {
                        "channel_id": f"ch{i % CHANNELS}", "data": {"type": "typing"}})
                if self.rng.random() < 0.1:
                    await client.emit("usage", {"model": f"m{i % 3}"})
                if has_docs and self.rng.random() < 0.05:
                    stage = "document update"
                    await self.doc_edit(client, doc, i)
                self.sent += 1
                await asyncio.sleep(self.rng.uniform(0.5, 1.5))
        except Exception as exc:  # a soak counts failures instead of stopping at the first
            self.errors.append(f"{uid} at {stage}: {type(exc).__name__}: {exc}")
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), 10)
            except Exception:
                pass

    async def doc_edit(self, client, doc: str, i: int) -> None:
        import pycrdt
        d = pycrdt.Doc()
        text = d.get("content", type=pycrdt.Text)
        text += f"[{i}]"
        ack = await client.call("ydoc:document:update",
                                {"document_id": doc, "update": list(d.get_update())}, timeout=30)
        if not (isinstance(ack, dict) and ack.get("ok")):
            self.errors.append(f"doc update refused: {ack}")

    async def emitter(self, stop_at: float) -> None:
        n = 0
        while time.monotonic() < stop_at:
            batch = [{"event": "events", "data": {"n": n + k},
                      "to": {"rooms": [f"channel:ch{(n + k) % CHANNELS}"]}} for k in range(10)]
            await self.api("POST", "/api/v1/emit/batch", batch)
            n += 10
            await asyncio.sleep(0.2)

    async def load(self, workers: int = 0) -> None:
        """The API emitter here; the clients here too, or split over `workers` processes
        (one Python process cannot run a thousand socket.io clients on its own: it would
        be the bottleneck, and its timeouts would count as the server's errors)."""
        stop_at = time.monotonic() + self.seconds
        emitter = asyncio.ensure_future(self.emitter(stop_at))
        if workers <= 1:
            await self.load_clients(range(self.clients), stop_at)
        else:
            procs = [await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--worker", self.url, str(self.clients),
                str(self.seconds), str(k), str(workers), stdout=asyncio.subprocess.PIPE)
                for k in range(workers)]
            outs = await asyncio.wait_for(
                asyncio.gather(*(proc.communicate() for proc in procs)), self.seconds + 180)
            self.sessions_opened = 0
            for proc, (out, _) in zip(procs, outs):
                if proc.returncode != 0:
                    self.errors.append(f"worker exited with {proc.returncode}")
                    continue
                part = orjson.loads(out.decode().strip().splitlines()[-1])
                self.sent += part["sent"]
                self.received += part["received"]
                self.errors += part["errors"]
                self.sessions_opened += part["sessions_opened"]
        await emitter

    async def load_clients(self, users: range, stop_at: float) -> None:
        """Keep one client per user of `users` connected until `stop_at`, with churn."""
        tasks = []
        i = 0
        while time.monotonic() < stop_at:
            live = sum(not t.done() for t in tasks)
            for _ in range(max(0, len(users) - live)):
                tasks.append(asyncio.ensure_future(self.one_client(users[i % len(users)], stop_at)))
                i += 1
                if i % 50 == 0:
                    await asyncio.sleep(0.05)  # connect in waves, like browsers after a deploy
            await asyncio.sleep(0.5)
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
        self.sessions_opened = i


def worker(url: str, clients: int, seconds: float, index: int, workers: int) -> int:
    """One load process: the clients of the users `index`, `index + workers`, ..."""
    async def go() -> dict:
        soak = Soak(url, clients, seconds, seed=7 + index)
        await soak.load_clients(range(index, clients, workers), time.monotonic() + seconds)
        soak.http.close()
        return {"sent": soak.sent, "received": soak.received, "errors": soak.errors,
                "sessions_opened": soak.sessions_opened}
    print(orjson.dumps(asyncio.run(go())).decode(), flush=True)
    return 0


async def settle(soak: Soak, timeout: float = 60.0) -> dict[str, float]:
    """Wait until the appliance reports no sessions, then a little longer for timers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = await soak.metrics()
        if m.get("rt_sessions", 1) == 0 and m.get("rt_users_online", 1) == 0 \
                and m.get("rt_connections{transport=polling}", 1) == 0 \
                and m.get("rt_connections{transport=websocket}", 1) == 0:
            await asyncio.sleep(4)  # usage entries expire, lingering sessions are forgotten
            return await soak.metrics()
        await asyncio.sleep(0.5)
    raise AssertionError("sessions did not drain after the clients left")


async def run(url: str, clients: int, seconds: float, rss_slack_mb: float,
              workers: int) -> dict:
    soak = Soak(url, clients, seconds)
    await soak.setup()
    # warm-up wave: allocator pools, imports and caches reach their working size first
    warm = Soak(url, max(10, clients // 10), 5)
    await warm.load()
    base = await settle(soak)
    started = time.monotonic()
    await soak.load(workers)
    elapsed = time.monotonic() - started
    after = await settle(soak)
    _, usage = await soak.api("GET", "/api/v1/usage")
    _, presence = await soak.api("GET", "/api/v1/presence")
    soak.http.close()
    warm.http.close()
    rss_base = base["process_resident_memory_bytes"] / 2**20
    rss_after = after["process_resident_memory_bytes"] / 2**20
    report = {
        "clients": clients, "load_processes": max(1, workers), "seconds": round(elapsed, 1),
        "sessions_opened": soak.sessions_opened,
        "client_events_sent": soak.sent, "events_received": soak.received,
        "errors": len(soak.errors), "first_errors": soak.errors[:5],
        "rss_base_mb": round(rss_base, 1), "rss_after_mb": round(rss_after, 1),
        "tasks_base": base["rt_tasks"], "tasks_after": after["rt_tasks"],
        "rooms_after": after["rt_rooms"], "sessions_after": after["rt_sessions"],
        "users_online_after": after["rt_users_online"],
        "usage_after": usage["models"], "presence_after": presence["users"],
    }
    problems = []
    if after["rt_sessions"] or after["rt_rooms"] or after["rt_users_online"]:
        problems.append("sessions, rooms or presence left behind")
    if usage["models"] or presence["users"]:
        problems.append("usage or presence entries left behind")
    if after["rt_tasks"] > base["rt_tasks"] + 2:
        problems.append("asyncio tasks left behind")
    if rss_after - rss_base > rss_slack_mb:
        problems.append(f"memory grew {rss_after - rss_base:.1f} MiB (> {rss_slack_mb})")
    if soak.errors and len(soak.errors) > max(2, soak.sessions_opened // 100):
        problems.append(f"{len(soak.errors)} client errors")
    report["problems"] = problems
    return report


def table(report: dict) -> str:
    rows = [f"| {k} | {v} |" for k, v in report.items() if k not in ("first_errors",)]
    return "| figure | value |\n|---|---|\n" + "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rss-slack-mb", type=float, default=40)
    parser.add_argument("--url", help="an appliance already running (else one is started)")
    parser.add_argument("--workers", type=int, default=2,
                        help="client processes (each runs clients/workers socket.io clients)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        url, clients, secs, index, workers = args.worker
        return worker(url, int(clients), float(secs), int(index), int(workers))
    seconds = args.minutes * 60 if args.minutes else args.seconds

    proc = None
    url = args.url
    if url is None:
        import tempfile
        tmp = Path(tempfile.mkdtemp(prefix="rt-soak-"))
        ini = ("[limits]\nmax_connections_per_ip = 100000\nconnects_per_second_per_ip = 100000\n"
               "connect_burst_per_ip = 100000\napi_requests_per_second = 100000\n"
               "api_burst = 100000\nevents_per_second = 1000\n[log]\nlevel = warning\n")
        proc = ApplianceProcess(tmp, ini)
        proc.start()
        url = f"http://127.0.0.1:{proc.port}"
    try:
        report = asyncio.run(run(url, args.clients, seconds, args.rss_slack_mb, args.workers))
    finally:
        if proc is not None:
            proc.stop()
    print(table(report))
    for err in report["first_errors"]:
        print("error:", err)
    for problem in report["problems"]:
        print("PROBLEM:", problem)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
