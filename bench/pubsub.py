#!/usr/bin/env python3
"""What a message from open-webui's backend costs the appliance, and open-webui's own socket
server beside it: one appliance in Redis mode with a room of clients, python-socketio's
AsyncServer with the stock AsyncRedisManager under uvicorn on the same Redis with a room of
its own, and the same emits to that room published three ways, in turn, for several rounds
(median):

- `own channel`: the appliance's own node-to-node channel (`<prefix>:socketio`, another
  node's emit, published as rt's RedisClientManager does);
- `foreign, room channel`: python-socketio's pub/sub protocol as open-webui 0.12 publishes
  it by default (`socketio#/#<room>`, the bridge's per-room subscription);
- `foreign, one channel`: the stock python-socketio AsyncRedisManager (`socketio`), which
  both servers hear at the same time.

    .venv/bin/python bench/pubsub.py            # ~1 min: 200 clients, 3 x 200 messages x 3 rounds
    .venv/bin/python bench/pubsub.py --clients 1 --messages 4000 --rate 2000 --name tokens

The figure is each server's CPU (its process tree, /proc) per 10,000 delivered messages,
from the first publish to the last delivery; the ratios are against the appliance's own
channel and, on the one-channel path, appliance / peer. Receivers are bench/load.mjs
processes (socket.io-client 4.8), which check that every message arrived. The publishers
run in this process, so it needs the project's .venv (python-socketio and redis); a
redis-server of its own is started on a free port of 127.0.0.1 and ended with the run.
Results: bench/results/<date>-pubsub[-NAME].md.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import socketio

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import run as bench  # noqa: E402 - the benchmark's children, workers and meters

from rt.backends.redis_conn import RedisTarget  # noqa: E402
from rt.backends.redis_manager import RedisClientManager  # noqa: E402

PREFIX = "bench"
ROOM = f"channel:{bench.CHANNEL}"
CHANNEL = "socketio"  # open-webui's, the appliance's default [openwebui] pubsub_channel


class RoomChannelPublisher(socketio.AsyncRedisManager):
    """Publishes like open-webui 0.12's room-channel manager: an emit aimed at one room on
    `<channel>#<namespace>#<room>`."""

    async def _publish(self, data: dict) -> None:
        room = data.get("room") if data.get("method") == "emit" else None
        channel = (f"{self.channel}#{data['namespace']}#{room}" if isinstance(room, str)
                   else self.channel)
        if not self.connected:
            self._redis_connect()
        await self.redis.publish(channel, self.json.dumps(data))


class RedisAppliance(bench.Server):
    """The appliance in Redis mode (the bridge on, with room channels: the defaults)."""

    def __init__(self, run_dir: Path, redis_url: str) -> None:
        super().__init__("appliance", run_dir, "pubsub")
        self.redis_url = redis_url

    def command(self) -> list[str]:
        ini = self.run_dir / "appliance-redis.ini"
        ini.write_text(bench.APPLIANCE_INI + f"\n[state]\nmanager = redis\nredis_url = "
                       f"{self.redis_url}\nkey_prefix = {PREFIX}\n")
        return [str(bench.VENV_PY), str(bench.ROOT / "appliance.py"), "serve", "--config",
                str(ini), "--port", "0", "--data-dir", str(self.run_dir / "appliance-data")]


def start_redis(run_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = bench.spawn(["redis-server", "--port", str(port), "--bind", bench.HOST, "--save", "",
                        "--appendonly", "no", "--dir", str(run_dir)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        probe = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                               text=True, timeout=5)
        if probe.stdout.strip() == "PONG":
            return proc, f"redis://{bench.HOST}:{port}/0"
        time.sleep(0.1)
    raise bench.BenchError("redis-server did not start")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind((bench.HOST, 0))
        return s.getsockname()[1]


def publishers(redis_url: str) -> dict[str, socketio.AsyncRedisManager]:
    own = RedisClientManager(RedisTarget(url=redis_url, key_prefix=PREFIX), write_only=True)
    return {
        "own channel": own,
        "foreign, room channel": RoomChannelPublisher(redis_url, channel=CHANNEL,
                                                      write_only=True),
        "foreign, one channel": socketio.AsyncRedisManager(redis_url, channel=CHANNEL,
                                                           write_only=True),
    }


async def publish(manager, phase: str, count: int, rate: float) -> None:
    """`count` emits to the room at `rate` per second, each with its send time."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await manager.emit("events", {
            "chat_id": "bench-chat", "message_id": f"m{i}",
            "data": {"type": "chat:message:delta", "data": {
                "content": "Hello from the benchmark", "ts": time.monotonic_ns() / 1000,
                "ph": phase}}}, room=ROOM)


class RedisPeer(bench.Server):
    """open-webui's own socket server on the same Redis: python-socketio's AsyncServer with
    the stock AsyncRedisManager under uvicorn (bench/peers/pysio_uvicorn.py --redis), as
    open-webui runs it with WEBSOCKET_REDIS_ROOM_CHANNELS=false. It hears the `socketio`
    channel only, so it takes part in the `foreign, one channel` phase."""

    def __init__(self, run_dir: Path, redis_url: str) -> None:
        super().__init__("pysio", run_dir, "pubsub")
        self.redis_url = redis_url

    def command(self) -> list[str]:
        return super().command() + ["--redis", self.redis_url]


PEER_PATHS = ("foreign, one channel",)  # what the peer hears of the published paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200, help="room members (default 200)")
    ap.add_argument("--messages", type=int, default=200, help="emits per phase (default 200)")
    ap.add_argument("--rate", type=float, default=100, help="emits per second (default 100)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true",
                    help="the appliance only (no python-socketio+uvicorn beside it)")
    ap.add_argument("--name", help="results/<date>-pubsub-NAME.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("redis-server and redis-cli are needed (apt-get install redis-server)",
              file=sys.stderr)
        return 1

    run_dir = Path(tempfile.mkdtemp(prefix="rt-bench-pubsub-"))
    results: dict[tuple[str, str], list[dict]] = {}
    members: dict[str, list[bench.Worker]] = {}  # server kind -> its load processes
    loop = asyncio.new_event_loop()
    pubs: dict = {}
    try:
        redis_proc, redis_url = start_redis(run_dir)
        servers = [RedisAppliance(run_dir, redis_url).start()]
        if not args.no_peer:
            servers.append(RedisPeer(run_dir, redis_url).start())
        users = [f"bu{i:05d}" for i in range(args.clients)]
        loads = max(1, min(2, args.clients))
        parts = bench.split(users, loads)
        for server in servers:
            bench.register_users(server, users)
            bench.put_channel(server, users)
            workers = members[server.kind] = [bench.Worker(f"{server.kind}-r{i}", run_dir)
                                              for i in range(loads)]
            bench.call_all([(w, "connect", dict(url=server.url, path="/ws/socket.io",
                                                users=part, concurrency=50))
                            for w, part in zip(workers, parts)], timeout=120)
            joined = bench.call_all([(w, "emit_all", dict(event="user-join", data={}))
                                     for w in workers], timeout=60)
            if sum(j["acked"] for j in joined) != len(users):
                raise bench.BenchError(f"{server.kind}: user-join: {joined}")
        pubs = publishers(redis_url)
        for rnd in range(args.rounds):
            for name, manager in pubs.items():
                phase = f"{name}-{rnd}"
                hearing = [s for s in servers if s.kind == "appliance" or name in PEER_PATHS]
                for server in hearing:
                    bench.call_all([(w, "listen", dict(event="events", phase=phase))
                                    for w in members[server.kind]], timeout=10)
                meters = [bench.Meter(s, members[s.kind]) for s in hearing]
                loop.run_until_complete(publish(manager, phase, args.messages, args.rate))
                expected = [args.messages * len(p) for p in parts]
                for server, meter in zip(hearing, meters):
                    workers = members[server.kind]
                    bench.call_all([(w, "wait_rx", dict(expected=e, timeout_ms=30000,
                                                        quiet_ms=2000))
                                    for w, e in zip(workers, expected)], timeout=40)
                    m = meter.done()
                    got = bench.call_all([(w, "collect", {}) for w in workers], timeout=30)
                    received = sum(g["count"] for g in got)
                    hist = bench.merge_hists([g["hist"] for g in got])
                    r = {"received": received, "expected": sum(expected),
                         "cpu_per_10k": 1e4 * m["server_cpu_s"] / received if received else None,
                         "p50_ms": bench.percentile_ms(hist, 0.5),
                         "p99_ms": bench.percentile_ms(hist, 0.99),
                         "other_cores": m["other_cores"]}
                    results.setdefault((name, server.kind), []).append(r)
                    bench.log(f"round {rnd + 1} {name}, {bench.LABELS[server.kind]}: "
                              f"{received}/{sum(expected)} delivered, "
                              f"{bench.fmt(r['cpu_per_10k'])} s CPU per 10k, "
                              f"p99 {bench.fmt(r['p99_ms'])} ms")
        for server in servers:
            server.stop()
    finally:
        for manager in pubs.values():
            redis = getattr(manager, "redis", None) or getattr(manager, "_pub", None)
            if redis is not None:
                loop.run_until_complete(redis.aclose())
        loop.close()
        for workers in members.values():
            for w in workers:
                w.close()
        bench.end_all()

    name = "pubsub" + (f"-{args.name}" if args.name else "")
    bench.report(report(results, args), name, write=not args.no_write)
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if all(r["received"] == r["expected"] for rs in results.values() for r in rs) else 1


def report(results: dict[tuple[str, str], list[dict]], args) -> str:
    def med(key: tuple[str, str], field: str) -> float | None:
        values = [r[field] for r in results.get(key, []) if r[field] is not None]
        return statistics.median(values) if values else None

    base = med(("own channel", "appliance"), "cpu_per_10k")
    lines = [
        f"# pub/sub paths into the appliance — {dt.datetime.now().astimezone():%Y-%m-%d %H:%M}",
        "",
        f"{args.clients} clients in `{ROOM}` on each server, {args.messages} emits per phase "
        f"at {args.rate:g}/s, {args.rounds} rounds alternated, medians; server CPU (utime + "
        f"stime of its process tree) per 10k delivered messages; nproc {os.cpu_count()}, "
        f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}. "
        f"`{bench.LABELS['pysio']}`: open-webui's own socket server on the same Redis "
        "(python-socketio's AsyncServer with the stock AsyncRedisManager under uvicorn, "
        "bench/peers/pysio_uvicorn.py --redis), which hears the `socketio` channel and so "
        "gets the `foreign, one channel` messages at the same time as the appliance.",
        "",
        "| path | server | delivered | CPU per 10k deliveries | vs appliance, own channel "
        "| appliance / peer | p50 / p99 latency |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (name, kind), rounds in results.items():
        delivered = f"{sum(r['received'] for r in rounds):,} / " \
                    f"{sum(r['expected'] for r in rounds):,}"
        cpu = med((name, kind), "cpu_per_10k")
        peer = med((name, "pysio"), "cpu_per_10k") if kind == "appliance" else None
        lines.append(f"| {name} | {bench.LABELS[kind]} | {delivered} | {bench.fmt(cpu)} s | "
                     f"{bench.ratio(cpu, base)} | "
                     f"{bench.ratio(cpu, peer) if peer is not None else '–'} | "
                     f"{bench.fmt(med((name, kind), 'p50_ms'))} / "
                     f"{bench.fmt(med((name, kind), 'p99_ms'))} ms |")
    other = med(("own channel", "appliance"), "other_cores")
    lines += ["", f"Rest of the machine during the phases (median): "
                  f"{bench.fmt(other)} cores."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
