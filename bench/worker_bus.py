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
from pathlib import Path

import run as bench  # bench/run.py, next to this script: servers, users, meters

BATCH = 100  # emits per request (the API's batch endpoint)

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


def hiredis_loaded(pid: int) -> bool:
    """Whether hiredis's extension module is mapped into the process."""
    with open(f"/proc/{pid}/maps") as maps:
        return any("hiredis" in line for line in maps)


def roles(pids: list[int], busiest: int) -> dict[int, str]:
    """Each process of the appliance's tree by what it does in this run."""
    out = {}
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        out[pid] = "broker" if "valkey" in comm or "redis" in comm else (
            "worker that took the emits" if pid == busiest else "python")
    return out


def measure(workers: int, without_hiredis: bool, batches: int, run_dir: Path,
            tag: str) -> dict[str, float]:
    """CPU per event (µs) of the emitting worker, of each other worker, and of the broker."""
    server = bench.Server("appliance", run_dir, tag, ini=bench.appliance_ini(workers),
                          workers=workers, env=appliance_env(without_hiredis, run_dir))
    server.start()
    try:
        bench.put_channel(server, ["bu00000"])  # a room whose one member is not connected
        post_batches(server.port, 5)  # warm-up: connections, caches
        time.sleep(0.5)
        pids = server.pids()
        before = {pid: bench.cpu_seconds([pid]) for pid in pids}
        post_batches(server.port, batches)
        time.sleep(0.5)  # the last events read by every worker
        used = {pid: bench.cpu_seconds([pid]) - before[pid] for pid in pids}
        busiest = max(used, key=lambda p: used[p])
        named = roles(pids, busiest)
        # the workers: the Python processes that worked (the supervisor and the document
        # host barely move)
        workers_seen = [p for p, r in named.items() if r != "broker" and used[p] > 0.01]
        parsers = {hiredis_loaded(pid) for pid in workers_seen}
        if parsers != {not without_hiredis}:
            raise bench.BenchError(f"hiredis loaded in the workers: {parsers}, expected "
                                   f"{not without_hiredis}")
    finally:
        server.stop()
    events = batches * BATCH
    others = sorted(used[p] for p in workers_seen if p != busiest)  # each reads every event
    return {
        "emitting": 1e6 * used[busiest] / events,
        "other": 1e6 * statistics.median(others) / events if others else 0.0,
        "broker": 1e6 * sum(used[p] for p, r in named.items() if r == "broker") / events,
        "total": 1e6 * sum(used.values()) / events,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=50, help="requests of 100 emits per round")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    bench.DEADLINE = bench.Deadline(900)
    run_dir = Path(tempfile.mkdtemp(prefix="rt-worker-bus-"))
    configs = [("with hiredis", False), ("without hiredis", True)]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    for rnd in range(args.rounds):
        for name, without in configs:
            r = measure(args.workers, without, args.batches, run_dir,
                        f"bus-{rnd}-{int(without)}")
            results[name].append(r)
            bench.log(f"round {rnd + 1} {name}: " + ", ".join(
                f"{k} {v:.0f} µs" for k, v in r.items()))
    keys = ("emitting", "other", "broker", "total")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys}
           for name, rs in results.items()}
    base = med["without hiredis"]
    lines = [
        f"# One event through the workers' broker — {dt.date.today().isoformat()}", "",
        f"`bench/worker_bus.py --workers {args.workers} --rounds {args.rounds} --batches "
        f"{args.batches}`: `[server] workers = {args.workers}`, {args.batches} requests of "
        f"{BATCH} HTTP emits to a room with no member connected, per round; CPU (utime + "
        f"stime) per event of each process, median of {args.rounds} rounds, the two "
        f"configurations alternated. Machine: {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f} at the end.", "",
        "| configuration | worker that took the emits | each other worker | broker | "
        "all processes | / without hiredis |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in med.items():
        lines.append(f"| {name} | {m['emitting']:.0f} µs | {m['other']:.0f} µs | "
                     f"{m['broker']:.0f} µs | {m['total']:.0f} µs | "
                     f"{m['total'] / base['total']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        out = bench.RESULTS / f"{dt.date.today().isoformat()}-worker-bus.md"
        out.write_text(text)
        bench.log(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
