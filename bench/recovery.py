#!/usr/bin/env python3
"""What connection state recovery costs: fan-out CPU per delivery and memory per connection
with `[recovery] enabled` on and off, on one node (embedded state) and on Redis.

Four appliances run side by side (one node off/on, Redis off/on, one redis-server of their
own on a free port), each with its own room of socket.io-client 4.8 receivers
(bench/load.mjs). Each round sends the same HTTP API emits to each appliance's room in
turn (fixed rate), several rounds, medians:

    .venv/bin/python bench/recovery.py          # ~2 min: 200 clients, 4 x 6 s x 3 rounds

Figures: the appliance's CPU (its process tree, /proc) per 10,000 delivered messages, from
the first emit to the last delivery, and its RSS growth per connected client (connected and
joined, recovery records written). The target: recovery on costs at most 15 % of the fan-out
CPU on one node. Results: bench/results/<date>-recovery.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]
import pubsub  # noqa: E402 - redis-server of its own
import run as bench  # noqa: E402 - the benchmark's children, workers and meters

ROOM = f"channel:{bench.CHANNEL}"
CONFIGS = ("one node, off", "one node, on", "Redis, off", "Redis, on")


def ini(config: str, redis_url: str, prefix: str) -> str:
    text = bench.APPLIANCE_INI
    text += f"\n[recovery]\nenabled = {'true' if config.endswith('on') else 'false'}\n"
    if config.startswith("Redis"):
        text += (f"\n[state]\nmanager = redis\nredis_url = {redis_url}\nkey_prefix = {prefix}\n"
                 "\n[openwebui]\npubsub = false\n")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200, help="room members per appliance")
    ap.add_argument("--rate", type=float, default=100, help="emits per second (default 100)")
    ap.add_argument("--seconds", type=float, default=6, help="seconds per phase (default 6)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("redis-server and redis-cli are needed (apt-get install redis-server)",
              file=sys.stderr)
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="rt-bench-recovery-"))
    results: dict[str, list[dict]] = {}
    memory: dict[str, float] = {}
    workers: list[bench.Worker] = []
    try:
        _, redis_url = pubsub.start_redis(run_dir)
        servers: dict[str, bench.Server] = {}
        receivers: dict[str, bench.Worker] = {}
        driver = bench.Worker("driver", run_dir)
        workers.append(driver)
        for i, config in enumerate(CONFIGS):
            server = bench.Server("appliance", run_dir, f"recovery-{i}",
                                  ini=ini(config, redis_url, f"bench-rec-{i}")).start()
            servers[config] = server
            users = [f"r{i}u{n:05d}" for n in range(args.clients)]
            bench.register_users(server, users)
            bench.put_channel(server, users)
            worker = bench.Worker(f"rx{i}", run_dir)
            workers.append(worker)
            receivers[config] = worker
            time.sleep(1.0)
            before = bench.rss_bytes(server.pids())
            worker.call("connect", timeout=120, url=server.url, path="/ws/socket.io",
                        users=users, concurrency=50)
            joined = worker.call("emit_all", timeout=60, event="user-join", data={})
            if joined["acked"] != len(users):
                raise bench.BenchError(f"{config}: user-join: {joined}")
            time.sleep(1.5)  # the records' first sync
            memory[config] = (bench.rss_bytes(server.pids()) - before) / len(users)
            bench.log(f"{config}: {memory[config] / 1024:.1f} KiB per connection")
        for rnd in range(args.rounds):
            for config in CONFIGS:
                server, worker = servers[config], receivers[config]
                phase = f"{config}-{rnd}"
                worker.call("listen", timeout=10, event="events", phase=phase)
                meter = bench.Meter(server, [worker])
                ident = driver.send("http_emit", url=server.url, api_key=bench.API_KEY,
                                    room=ROOM, phase=phase, mode="rate", rate=args.rate,
                                    duration_ms=int(args.seconds * 1000))
                sent_r = driver.recv(ident, timeout=args.seconds + 120)
                sent = sent_r["sent"] - sent_r["failed"]
                worker.call("wait_rx", timeout=70, expected=sent * args.clients,
                            timeout_ms=60000, quiet_ms=2000)
                m = meter.done()
                got = worker.call("collect", timeout=30)
                received = got["count"]
                hist = bench.merge_hists([got["hist"]])
                r = {"received": received, "expected": sent * args.clients,
                     "cpu_per_10k": 1e4 * m["server_cpu_s"] / received if received else None,
                     "p50_ms": bench.percentile_ms(hist, 0.5),
                     "p99_ms": bench.percentile_ms(hist, 0.99),
                     "other_cores": m["other_cores"]}
                results.setdefault(config, []).append(r)
                bench.log(f"round {rnd + 1} {config}: {received}/{r['expected']} delivered, "
                          f"{bench.fmt(r['cpu_per_10k'])} s CPU per 10k")
        for server in servers.values():
            server.stop()
    finally:
        for w in workers:
            w.close()
        bench.end_all()
    bench.report(report(results, memory, args), "recovery", write=not args.no_write)
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if all(r["received"] == r["expected"] for rs in results.values() for r in rs) else 1


def report(results: dict[str, list[dict]], memory: dict[str, float], args) -> str:
    def med(name: str, key: str) -> float | None:
        values = [r[key] for r in results.get(name, []) if r[key] is not None]
        return statistics.median(values) if values else None

    lines = [
        f"# connection state recovery — {dt.datetime.now().astimezone():%Y-%m-%d %H:%M}",
        "",
        f"{args.clients} socket.io-client 4.8 clients in `{ROOM}` per appliance, HTTP API "
        f"emits at {args.rate:g}/s for {args.seconds:g} s per phase, {args.rounds} rounds "
        f"alternated, medians; appliance CPU (utime + stime of its process tree) per 10k "
        f"delivered messages; RSS growth per connected, joined client; nproc "
        f"{os.cpu_count()}, load average at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        "| backend, recovery | delivered | CPU per 10k deliveries | vs off | p50 / p99 latency "
        "| RSS per connection |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in CONFIGS:
        rounds = results.get(name, [])
        base = med(name.replace(", on", ", off"), "cpu_per_10k")
        cpu = med(name, "cpu_per_10k")
        delivered = f"{sum(r['received'] for r in rounds):,} / " \
                    f"{sum(r['expected'] for r in rounds):,}"
        lines.append(f"| {name} | {delivered} | {bench.fmt(cpu)} s | {bench.ratio(cpu, base)} "
                     f"| {bench.fmt(med(name, 'p50_ms'))} / {bench.fmt(med(name, 'p99_ms'))} ms "
                     f"| {memory.get(name, 0) / 1024:.1f} KiB |")
    other = med(CONFIGS[0], "other_cores")
    lines += ["", f"Rest of the machine during the phases (median): {bench.fmt(other)} cores."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
