#!/usr/bin/env python3
"""What one event costs each process of `[server] workers = N` on its way through the broker.

    .venv/bin/python bench/worker_bus.py                  # 2 workers, with and without hiredis
    .venv/bin/python bench/worker_bus.py --workers 4 --rounds 5

With workers, an emit is appended to the recovery log on the broker and published there;
every worker reads every published event from its subscription, the one that took the
emit included, and delivers its own share. So each event costs every worker its read,
whether or not it has a member of the room: that cost, times the number of workers, is what
the workers of a big box pay per event before a single delivery. Here the events go to a
room with no member connected, as HTTP emits in batches of 100 (one request per 100 events,
so the HTTP handling is small beside the rest), and the CPU of each process of the appliance
(/proc utime + stime) is divided by the number of events: the worker that took the requests,
the others, the broker.

That is the `emits` phase, where a worker reads the events one at a time as the worker that
took them appends them, and pays the wake-up of an idle process for most of them. In the
`burst` phase this process publishes `--burst` node-to-node emits (python-socketio's
message, as another node sends it) to the broker's channel in pipelines of 1000, to the same
room: each worker reads them back to back and drops them once parsed (no member there), so
its CPU per message is the read itself.

Each configuration runs as its own appliance, in turn, for several rounds (median).
`without hiredis` starts the same appliance with a directory first on its PYTHONPATH whose
`hiredis` cannot be imported: redis-py then reads replies with its pure-Python parser, as it
did before hiredis was a dependency. Results: bench/results/<date>-worker-bus.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import run as bench  # noqa: E402 - bench/run.py: servers, users, meters

from rt.backends.redis_conn import RedisTarget  # noqa: E402
from rt.config import load_settings  # noqa: E402

BATCH = 100  # emits per request (the API's batch endpoint)
PIPELINE = 1000  # publishes per round trip in the burst phase

# a `hiredis` that fails to import, as when the package is not installed
BLOCKER = "raise ImportError('hiredis left out by bench/worker_bus.py')\n"


def appliance_env(without_hiredis: bool, run_dir: Path) -> dict[str, str]:
    """What the appliance's environment gets in addition to this one's."""
    if not without_hiredis:
        return {}
    blocker = run_dir / "no-hiredis" / "hiredis"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text(BLOCKER)
    return {"PYTHONPATH": os.pathsep.join(
        [str(blocker.parent)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                 else []))}


def post_batches(port: int, batches: int) -> None:
    conn = http.client.HTTPConnection(bench.HOST, port, timeout=bench.DEADLINE.cap(30))
    one = {"event": "bench", "data": {"n": 1}, "to": {"rooms": [f"channel:{bench.CHANNEL}"]}}
    body = json.dumps([one] * BATCH).encode()
    headers = {"Authorization": f"Bearer {bench.API_KEY}", "Content-Type": "application/json"}
    try:
        for _ in range(batches):
            conn.request("POST", "/api/v1/emit/batch", body=body, headers=headers)
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status != 202:
                raise bench.BenchError(f"emit batch: {resp.status} {answer[:200]!r}")
    finally:
        conn.close()


def broker_socket(pid: int) -> str:
    """The Unix socket the broker listens on, from its process title (valkey-server sets it
    to `<program> unixsocket:<path>`)."""
    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    for word in title.split():
        if word.startswith("unixsocket:"):
            return word.removeprefix("unixsocket:")
    raise bench.BenchError(f"no unixsocket in the broker's title: {title!r}")


def node_channel(server: bench.Server, socket_path: str) -> str:
    """The workers' node-to-node channel, named as the appliance names it from its INI."""
    prefix = load_settings(str(server.config_path), environ={}).state.key_prefix
    return RedisTarget(url=f"unix://{socket_path}", key_prefix=prefix).keys().channel("socketio")


def publish_burst(socket_path: str, channel: str, count: int) -> None:
    """`count` emits of another node to the room, as python-socketio publishes them
    (published in pipelines: the project's publisher sends one at a time)."""
    message = json.dumps({"method": "emit", "event": "bench", "data": {"n": 1},
                          "namespace": "/", "room": f"channel:{bench.CHANNEL}",
                          "skip_sid": None, "callback": None, "host_id": "bench-other-node"})
    client = redis.Redis(unix_socket_path=socket_path, socket_timeout=bench.DEADLINE.cap(30))
    try:
        for start in range(0, count, PIPELINE):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(PIPELINE, count - start)):
                pipe.publish(channel, message)
            receivers = pipe.execute()
            if min(receivers) < 1:
                raise bench.BenchError(f"burst: a publish reached {min(receivers)} workers")
    finally:
        client.close()


def parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def hiredis_loaded(pid: int) -> bool:
    """Whether hiredis's extension module is mapped into the process."""
    with open(f"/proc/{pid}/maps") as maps:
        return any("hiredis" in line for line in maps)


def measure(workers: int, without_hiredis: bool, batches: int, burst: int, run_dir: Path,
            tag: str) -> dict[str, float]:
    """CPU per event (µs): in the emits phase of the worker that took them, of each other
    worker and of the broker; in the burst phase of each worker and of the broker."""
    server = bench.Server("appliance", run_dir, tag, ini=bench.appliance_ini(workers),
                          workers=workers, env=appliance_env(without_hiredis, run_dir))
    server.start()
    try:
        bench.put_channel(server, ["bu00000"])  # a room whose one member is not connected
        post_batches(server.port, 5)  # warm-up: connections, caches
        time.sleep(0.5)
        pids = server.pids()
        named = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids}
        brokers = [p for p, comm in named.items() if "valkey" in comm or "redis" in comm]
        if len(brokers) != 1:
            raise bench.BenchError(f"not one broker among the appliance's processes: {named}")

        def cpu_over(phase: Callable[[], None]) -> dict[int, float]:
            before = {pid: bench.cpu_seconds([pid]) for pid in pids}
            phase()
            time.sleep(0.5)  # the last events read by every worker
            return {pid: bench.cpu_seconds([pid]) - before[pid] for pid in pids}

        emits = cpu_over(lambda: post_batches(server.port, batches))
        socket_path = broker_socket(brokers[0])
        channel = node_channel(server, socket_path)
        bursts = cpu_over(lambda: publish_burst(socket_path, channel, burst))
        # the workers: the supervisor's children but the broker (each worker's document
        # host is a child of that worker)
        workers_seen = [p for p in pids if p not in brokers and parent(p) == server.proc.pid]
        if len(workers_seen) != workers:
            raise bench.BenchError(f"{len(workers_seen)} workers found, not {workers}: {named}")
        parsers = {hiredis_loaded(pid) for pid in workers_seen}
        if parsers != {not without_hiredis}:
            raise bench.BenchError(f"hiredis loaded in the workers: {parsers}, expected "
                                   f"{not without_hiredis}")
    finally:
        server.stop()
    events = batches * BATCH
    took = max(workers_seen, key=lambda p: emits[p])  # the worker that took the requests
    others = [emits[p] for p in workers_seen if p != took]
    return {
        "emitting": 1e6 * emits[took] / events,
        "other": 1e6 * statistics.median(others) / events if others else 0.0,
        "broker": 1e6 * emits[brokers[0]] / events,
        "total": 1e6 * sum(emits.values()) / events,
        "burst worker": 1e6 * statistics.median(bursts[p] for p in workers_seen) / burst,
        "burst broker": 1e6 * bursts[brokers[0]] / burst,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=50, help="requests of 100 emits per round")
    ap.add_argument("--burst", type=int, default=20000, help="messages of the burst phase")
    ap.add_argument("--name", help="results/<date>-worker-bus-NAME.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    bench.DEADLINE = bench.Deadline(900)
    run_dir = Path(tempfile.mkdtemp(prefix="rt-worker-bus-"))
    configs = [("with hiredis", False), ("without hiredis", True)]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    for rnd in range(args.rounds):
        for name, without in configs:
            r = measure(args.workers, without, args.batches, args.burst, run_dir,
                        f"bus-{rnd}-{int(without)}")
            results[name].append(r)
            bench.log(f"round {rnd + 1} {name}: " + ", ".join(
                f"{k} {v:.0f} µs" for k, v in r.items()))
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for name, rs in results.items()}
    base = med["without hiredis"]
    lines = [
        f"# One event through the workers' broker — {dt.date.today().isoformat()}", "",
        f"`bench/worker_bus.py --workers {args.workers} --rounds {args.rounds} --batches "
        f"{args.batches} --burst {args.burst}`: `[server] workers = {args.workers}`; CPU "
        f"(utime + stime) per event of each process, median of {args.rounds} rounds, the "
        f"two configurations alternated, a fresh appliance each. Machine: {os.cpu_count()} "
        f"cores, load average {os.getloadavg()[0]:.2f} at the end.", "",
        f"Emits: {args.batches} requests of {BATCH} HTTP emits to a room with no member "
        "connected (each appended to the recovery log on the broker, published there, read "
        "by every worker).", "",
        "| configuration | worker that took the emits | each other worker | broker | "
        "all processes | / without hiredis |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in med.items():
        lines.append(f"| {name} | {m['emitting']:.0f} µs | {m['other']:.0f} µs | "
                     f"{m['broker']:.0f} µs | {m['total']:.0f} µs | "
                     f"{m['total'] / base['total']:.2f} |")
    lines += ["", f"Burst: {args.burst} node-to-node emits to the same room published "
              f"straight to the broker's channel, {PIPELINE} per round trip (each worker reads "
              "them back to back and drops them, no member being there).", "",
              "| configuration | each worker | / without hiredis | broker |",
              "|---|---:|---:|---:|"]
    for name, m in med.items():
        lines.append(f"| {name} | {m['burst worker']:.1f} µs | "
                     f"{m['burst worker'] / base['burst worker']:.2f} | "
                     f"{m['burst broker']:.1f} µs |")
    bench.report("\n".join(lines) + "\n",
                 "worker-bus" + (f"-{args.name}" if args.name else ""), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
