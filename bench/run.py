#!/usr/bin/env python3
"""The project's benchmark: the appliance against python-socketio under uvicorn and the
reference Node socket.io 4.8 server, on node:http (`ws`) and on uWebSockets.js, side by side
in one run.

    python bench/run.py            # full run (10k idle connections, 1000-member room), <= 25 min
    python bench/run.py --quick    # CI-sized run, ~3 min

Each scenario is run for every server in turn (A, B, C, A, B, C, ...) for several rounds and
the median is reported. Results: a markdown table printed and written to
bench/results/<date>[-quick].md, raw figures in bench/results/latest.json. bench/README.md
describes the scenarios and how to read the figures.

This script uses the standard library only; the servers run on the project's .venv and on
Node with tests/node/node_modules (socket.io 4.8, socket.io-client 4.8) and
bench/peers/node_modules (socket.io 4.8 with uWebSockets.js: `npm ci` in bench/peers).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import http.client
import json
import math
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import flood  # the flood block (bench/flood.py), next to this script

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
VENV_PY = ROOT / ".venv" / "bin" / "python"
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
PEERS = BENCH / "peers"
PEER_MODULES = PEERS / "node_modules"  # bench/peers/package.json: socket.io on uWebSockets.js
UWS_PACKAGE = "uwebsockets"  # npm name of the uWebSockets.js binaries (third-party republish)
SECRET = "bench-secret-" + "k" * 64  # >= 64 bytes: no PyJWT short-key warning anywhere
API_KEY = "bench-api-key-0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
CHANNEL = "bench"

SERVERS = ("appliance", "pysio", "node", "node-uws")
# pysio-deflate: uvicorn as configured out of the box, which negotiates permessage-deflate
# with every client that offers it (browsers and socket.io-client do); opt-in via --servers.
OPTIONAL_SERVERS = ("pysio-deflate",)
# node-cluster: socket.io on node:cluster with @socket.io/sticky and @socket.io/cluster-adapter,
# N workers; only in the workers-scaling block.
CLUSTER_PACKAGES = ("socket.io", "@socket.io/sticky", "@socket.io/cluster-adapter")
LABELS = {"appliance": "appliance", "pysio": "python-socketio+uvicorn",
          "node": "node socket.io (ws)", "node-uws": "node socket.io (uWS)",
          "node-cluster": "node socket.io cluster (ws)",
          "pysio-deflate": "python-socketio+uvicorn (deflate)"}

# The appliance's production limits are per-connection and per-address policies (typing
# 5/s, 20 connects/s per address, 200 connections per address, 500 API calls/s ...). The
# benchmark drives everything from 127.0.0.1, so they are lifted: it measures the transport,
# and the peers have no such limits. Logging at warning for every server (no access log).
APPLIANCE_INI = """\
[limits]
typing_per_second = 1000000
typing_burst = 1000000
max_connections = 1000000
max_connections_per_ip = 1000000
connects_per_second_per_ip = 1000000
connect_burst_per_ip = 1000000
events_per_second = 1000000
events_burst = 1000000
api_requests_per_second = 1000000
api_burst = 1000000

[log]
level = warning

[server]
# one process, like each peer but node-cluster; the workers-scaling block sets N
workers = 1
"""

PROFILES = {
    "quick": dict(
        rounds=3, conns=500, warmup_conns=20, settle=1.0, connect_concurrency=50,
        rtt_clients=50, rtt_rate=500, rtt_duration=2.0, echo_inflight=10, echo_duration=2.0,
        room=200, typing_senders=4, fixed_rate=10, fixed_duration=1.5,
        sat_messages=100, emit_concurrency=4, deadline=420, gen_check=False, scaling=False),
    "full": dict(
        rounds=3, conns=10000, warmup_conns=50, settle=3.0, connect_concurrency=50,
        rtt_clients=50, rtt_rate=500, rtt_duration=8.0, echo_inflight=10, echo_duration=6.0,
        room=1000, typing_senders=4, fixed_rate=5, fixed_duration=6.0,
        sat_messages=100, emit_concurrency=4, deadline=1500, gen_check=True, scaling=True),
}


class BenchError(RuntimeError):
    pass


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise BenchError(f"run deadline passed during {what}")

    def cap(self, seconds: float) -> float:
        """A wait of at most `seconds`, and never past the run deadline."""
        return max(0.1, min(seconds, self.left()))


DEADLINE = Deadline(900)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def report(text: str, name: str, write: bool = True) -> None:
    """Print a benchmark's Markdown table and, with `write`, keep it as
    results/<date>-<name>.md (the helper scripts next to this one)."""
    print(text)
    if write:
        path = RESULTS / f"{dt.date.today().isoformat()}-{name}.md"
        path.write_text(text)
        log(f"wrote {path.relative_to(ROOT)}")


# --------------------------------------------------------------------- children ---

CHILDREN: list[subprocess.Popen] = []


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen:
    """A child in its own process group, so it and anything it starts can be ended by id."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    CHILDREN.append(proc)
    return proc


def end(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # the group, even when its leader already left (stray grandchildren)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        pass
    for stream in (proc.stdin, proc.stdout):
        if stream:
            try:
                stream.close()
            except OSError:
                pass
    if proc in CHILDREN:
        CHILDREN.remove(proc)


def end_all() -> None:
    for proc in list(CHILDREN):
        end(proc, grace=3.0)


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ------------------------------------------------------------------------ /proc ---

def proc_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


# ---------------------------------------------------------------------- servers ---

class Server:
    """One benchmarked server as a child process on a free port of 127.0.0.1."""

    def __init__(self, kind: str, run_dir: Path, tag: str, ini: str = APPLIANCE_INI,
                 workers: int = 1, env: dict[str, str] | None = None):
        self.kind = kind
        self.workers = workers  # node-cluster's worker processes
        self.env = env or {}  # added to this process's environment
        self.ini = ini  # the appliance's configuration
        self.run_dir = run_dir
        self.log_path = run_dir / f"{kind}-{tag}.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def config_path(self) -> Path:
        """The appliance's INI file (written as it starts)."""
        return self.run_dir / f"appliance-{self.log_path.stem}.ini"

    def command(self) -> list[str]:
        if self.kind == "appliance":
            ini = self.config_path
            ini.write_text(self.ini)
            return [str(VENV_PY), str(ROOT / "appliance.py"), "serve", "--config", str(ini),
                    "--port", "0", "--data-dir", str(self.run_dir / "appliance-data")]
        if self.kind.startswith("pysio"):
            # like-for-like by default: the appliance and Node do not compress either
            return [str(VENV_PY), str(BENCH / "peers" / "pysio_uvicorn.py"), "--port", "0"] + (
                [] if self.kind == "pysio-deflate" else ["--no-deflate"])
        if self.kind == "node-uws":
            return ["node", str(PEERS / "node_uws_server.mjs"), "--port", "0"]
        if self.kind == "node-cluster":
            return ["node", str(PEERS / "node_cluster_server.mjs"), "--port", "0",
                    "--workers", str(self.workers)]
        return ["node", str(PEERS / "node_server.mjs"), "--port", "0"]

    def start(self, timeout: float = 30.0) -> Server:
        env = {**os.environ, **self.env, "WEBUI_SECRET_KEY": SECRET, "RT_API_KEY": API_KEY,
               "PYTHONUNBUFFERED": "1"}
        logf = open(self.log_path, "w")
        self.proc = spawn(self.command(), cwd=ROOT, env=env, stdin=subprocess.PIPE,
                          stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        deadline = time.monotonic() + DEADLINE.cap(timeout)
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://[^:]+:(\d+)", self.log_path.read_text())
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not self.port:
            self.stop()
            raise BenchError(f"{self.kind} did not start:\n{self.log_path.read_text()[-2000:]}")
        while time.monotonic() < deadline:  # listening, and answering
            try:
                if http_call(self.port, "GET", "/healthz", None, timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.kind} never answered /healthz")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def pids(self) -> list[int]:
        return proc_tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            end(self.proc, grace=10.0)


def http_call(port: int, method: str, path: str, body: Any, timeout: float = 10.0,
              conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


def register_users(server: Server, users: list[str], threads: int = 8) -> None:
    """PUT /api/v1/users/{id} for every user, over a few keep-alive connections."""
    chunks = [users[i::threads] for i in range(threads)]

    def run(chunk: list[str]) -> None:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=DEADLINE.cap(30))
        try:
            for user in chunk:
                status, body = http_call(server.port, "PUT", f"/api/v1/users/{user}",
                                         {"name": f"Bench {user}"}, conn=conn)
                if status != 200:
                    raise BenchError(f"{server.kind}: PUT user {user}: {status} {body[:200]!r}")
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for fut in [pool.submit(run, c) for c in chunks if c]:
            fut.result(timeout=DEADLINE.cap(120))


def put_channel(server: Server, members: list[str]) -> None:
    status, body = http_call(server.port, "PUT", f"/api/v1/channels/{CHANNEL}",
                             {"members": members}, timeout=DEADLINE.cap(30))
    if status != 200:
        raise BenchError(f"{server.kind}: PUT channel: {status} {body[:200]!r}")


# ---------------------------------------------------------------------- workers ---

class Worker:
    """One bench/load.mjs process (socket.io-client sockets), JSON lines on stdin/stdout."""

    def __init__(self, name: str, run_dir: Path):
        self.name = name
        self.stderr = open(run_dir / f"load-{name}.log", "w")
        env = {**os.environ, "WEBUI_SECRET_KEY": SECRET}
        # BENCH_LOAD_NODE_ARGS: extra node flags for the load processes (e.g. --cpu-prof)
        extra = os.environ.get("BENCH_LOAD_NODE_ARGS", "").split()
        self.proc = spawn(["node", *extra, str(BENCH / "load.mjs")], cwd=ROOT, env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                          text=True, bufsize=1)
        self.replies: queue.Queue = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.pid = self.proc.pid
        hello = self.call("hello", timeout=20)
        self.node = hello["node"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.replies.put(json.loads(line))
            except ValueError:
                self.replies.put({"id": None, "ok": False, "error": f"bad line {line[:200]!r}"})
        self.replies.put(None)

    def send(self, cmd: str, **fields: Any) -> int:
        self.next_id += 1
        self.proc.stdin.write(json.dumps({"id": self.next_id, "cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()
        return self.next_id

    def recv(self, ident: int, timeout: float) -> dict:
        deadline = time.monotonic() + DEADLINE.cap(timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"load worker {self.name}: no reply within {timeout:.0f} s")
            try:
                msg = self.replies.get(timeout=left)
            except queue.Empty:
                continue
            if msg is None:
                raise BenchError(f"load worker {self.name} exited")
            if msg.get("id") != ident:
                continue  # a reply to a command abandoned after a timeout
            if not msg.get("ok"):
                raise BenchError(f"load worker {self.name}: {msg.get('error')}")
            return msg

    def call(self, cmd: str, timeout: float = 30.0, **fields: Any) -> dict:
        return self.recv(self.send(cmd, **fields), timeout)

    def close(self) -> None:
        end(self.proc, grace=3.0)
        self.stderr.close()


def call_all(calls: list[tuple[Worker, str, dict]], timeout: float) -> list[dict]:
    """Send each worker its command, then wait for all replies."""
    idents = [(w, w.send(cmd, **fields)) for w, cmd, fields in calls]
    return [w.recv(i, timeout) for w, i in idents]


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores; steal and idle excluded)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / CLK_TCK


class Meter:
    """CPU over one phase: the server's process tree, each load process, this runner and the
    rest of the machine (other work on a shared machine shows up there)."""

    def __init__(self, server: Server, workers: list[Worker]):
        self.server_pids = server.pids()
        self.workers = workers
        self.t0 = time.monotonic()
        self.s0 = cpu_seconds(self.server_pids)
        self.w0 = [cpu_seconds([w.pid]) for w in workers]
        self.r0 = sum(os.times()[:2])
        self.m0 = machine_busy_seconds()

    def done(self) -> dict:
        wall = max(time.monotonic() - self.t0, 1e-6)
        server = cpu_seconds(self.server_pids) - self.s0
        gen = [(cpu_seconds([w.pid]) - c) for w, c in zip(self.workers, self.w0)]
        runner = sum(os.times()[:2]) - self.r0
        machine = machine_busy_seconds() - self.m0
        return {
            "wall_s": wall, "server_cpu_s": server, "server_cores": server / wall,
            "gen_max_worker": max(gen) / wall, "gen_total": sum(gen) / wall,
            "runner_cores": runner / wall,
            "other_cores": max(0.0, machine - server - sum(gen) - runner) / wall,
        }


# ------------------------------------------------------------------- histograms ---

def merge_hists(hists: list[dict]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for k, v in h.items():
            out[int(k)] = out.get(int(k), 0) + v
    return out


def percentile_ms(hist: dict[int, int], q: float) -> float | None:
    n = sum(hist.values())
    if not n:
        return None
    rank, seen = q * n, 0
    for k in sorted(hist):
        seen += hist[k]
        if seen >= rank:
            return math.exp(k / 200) / 1000.0
    return math.exp(max(hist) / 200) / 1000.0


def split(items: list, n: int) -> list[list]:
    return [items[i::n] for i in range(n)]


# -------------------------------------------------------------------- scenarios ---

class Bench:
    def __init__(self, prof: dict, run_dir: Path, workers: int, servers: list[str]):
        self.p = prof
        self.run_dir = run_dir
        self.servers = servers
        self.receivers = [Worker(f"r{i}", run_dir) for i in range(workers)]
        self.driver = Worker("driver", run_dir)
        self.extra: list[Worker] = []
        self.users = [f"bu{i:05d}" for i in range(max(prof["conns"], prof["room"],
                                                      prof["rtt_clients"]) + prof["warmup_conns"])]
        self.appliance_registered = 0  # the appliance keeps its directory across restarts
        self.raw: dict[str, dict[str, list[dict]]] = {}  # block -> server -> per-round dicts
        self.gen: dict[str, dict[str, list[dict]]] = {}  # phase -> server -> generator cpu
        self.notes: list[str] = []

    def all_workers(self) -> list[Worker]:
        return self.receivers + [self.driver] + self.extra

    def register(self, server: Server, n: int) -> None:
        if server.kind == "appliance":
            if n <= self.appliance_registered:
                return
            register_users(server, self.users[self.appliance_registered:n])
            self.appliance_registered = n
        else:
            register_users(server, self.users[:n])

    def record(self, block: str, kind: str, result: dict) -> None:
        self.raw.setdefault(block, {}).setdefault(kind, []).append(result)

    def record_gen(self, phase: str, kind: str, gen: dict) -> None:
        self.gen.setdefault(phase, {}).setdefault(kind, []).append(gen)

    def disconnect_all(self, workers: list[Worker]) -> None:
        call_all([(w, "disconnect", {}) for w in workers], timeout=60)

    # ---------------------------------------------------------------- connect/memory
    def block_connect(self, kind: str, rnd: int) -> dict:
        """Fresh server: N authenticated connections as fast as the server takes them
        (connect rate incl. JWT verification), then idle: RSS delta / N."""
        p = self.p
        server = Server(kind, self.run_dir, f"connect{rnd}").start()
        try:
            n = p["conns"]
            warm = self.users[n:n + p["warmup_conns"]]
            self.register(server, n + p["warmup_conns"])
            # warm-up: code paths, lazy imports, first allocations
            w0 = self.receivers[0]
            w0.call("connect", timeout=60, url=server.url, path="/ws/socket.io", users=warm,
                    concurrency=10)
            w0.call("emit_all", timeout=60, event="heartbeat")
            w0.call("disconnect", timeout=30)
            time.sleep(0.5)
            pids = server.pids()
            rss0 = rss_bytes(pids)
            meter = Meter(server, self.receivers)
            parts = split(self.users[:n], len(self.receivers))
            replies = call_all([(w, "connect", dict(
                url=server.url, path="/ws/socket.io", users=part,
                concurrency=p["connect_concurrency"], timeout_ms=30000))
                for w, part in zip(self.receivers, parts)], timeout=60 + n / 20)
            m = meter.done()
            cpu_s = m["server_cpu_s"]
            self.record_gen("connect", kind, m)
            connected = sum(r["connected"] for r in replies)
            failed = sum(r["failed"] for r in replies)
            span = (max(r["t1"] for r in replies) - min(r["t0"] for r in replies)) / 1e6
            time.sleep(p["settle"])
            rss1 = rss_bytes(server.pids())
            errors: dict[str, int] = {}
            for r in replies:
                for k, v in r["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            self.disconnect_all(self.receivers)
            return {
                "connected": connected, "failed": failed, "errors": errors,
                "connect_rate": connected / span if span > 0 else None,
                "connect_cpu_ms": 1000 * cpu_s / connected if connected else None,
                "rss_base_mb": rss0 / 2**20, "rss_loaded_mb": rss1 / 2**20,
                "mem_per_conn_kib": (rss1 - rss0) / 1024 / connected if connected else None,
                "ws_extensions": replies[0].get("extensions"),
            }
        finally:
            server.stop()

    # ------------------------------------------------------------- acked RTT, echo
    def block_rtt(self, server: Server, rnd: int, echo_only: bool = False,
                  tag: str = "") -> dict:
        """(1) `heartbeat` with ack at a fixed total rate (open loop): round trip p50/p99 and
        server CPU per 10k; (2) echo: the same acked round trip saturated, every client
        keeping `echo_inflight` requests in flight (closed loop): acked round trips/s and
        server CPU per 10k. The appliance has no `echo` event; `heartbeat` (ack without
        arguments) is the round trip every server has, so both phases use it."""
        p = self.p
        k = p["rtt_clients"]
        parts = split(self.users[:k], len(self.receivers))
        call_all([(w, "connect", dict(url=server.url, path="/ws/socket.io", users=part,
                                      concurrency=25))
                  for w, part in zip(self.receivers, parts)], timeout=60)
        out: dict[str, Any] = {}
        try:
            if not echo_only:
                meter = Meter(server, self.receivers)
                replies = call_all([(w, "rtt", dict(
                    event="heartbeat", data={}, clients=len(part),
                    rate_per_client=p["rtt_rate"] / k,
                    duration_ms=int(p["rtt_duration"] * 1000), timeout_ms=5000))
                    for w, part in zip(self.receivers, parts)],
                    timeout=p["rtt_duration"] + 30)
                m = meter.done()
                self.record_gen("rtt" + tag, server.kind, m)
                hist = merge_hists([r["hist"] for r in replies])
                acked = sum(r["acked"] for r in replies)
                out.update({
                    "sent": sum(r["sent"] for r in replies), "acked": acked,
                    "failed": sum(r["failed"] for r in replies),
                    "lost": sum(r["lost"] for r in replies),
                    "rate": acked / p["rtt_duration"],
                    "p50_ms": percentile_ms(hist, 0.50), "p99_ms": percentile_ms(hist, 0.99),
                    "cpu_per_10k": 1e4 * m["server_cpu_s"] / acked if acked else None,
                    "server_cores": m["server_cores"],
                })
            DEADLINE.check("echo")
            meter = Meter(server, self.receivers)
            replies = call_all([(w, "echo", dict(
                event="heartbeat", data={}, clients=len(part), inflight=p["echo_inflight"],
                duration_ms=int(p["echo_duration"] * 1000), timeout_ms=10000))
                for w, part in zip(self.receivers, parts)], timeout=p["echo_duration"] + 30)
            m = meter.done()
            self.record_gen("echo" + tag, server.kind, m)
            hist = merge_hists([r["hist"] for r in replies])
            acked = sum(r["acked"] for r in replies)
            span = (max(r["t1"] for r in replies) - min(r["t0"] for r in replies)) / 1e6
            out["echo"] = {
                "sent": sum(r["sent"] for r in replies), "acked": acked,
                "failed": sum(r["failed"] for r in replies),
                "lost": sum(r["lost"] for r in replies),
                "rate": acked / span if span > 0 else None,
                "p50_ms": percentile_ms(hist, 0.50), "p99_ms": percentile_ms(hist, 0.99),
                "cpu_per_10k": 1e4 * m["server_cpu_s"] / acked if acked else None,
                "server_cores": m["server_cores"],
            }
        finally:
            self.disconnect_all(self.receivers)
        return out

    # ---------------------------------------------------------------------- fan-out
    def block_fanout(self, server: Server, rnd: int, receivers: list[Worker] | None = None,
                     tag: str = "", only: tuple[str, ...] = ()) -> dict:
        p = self.p
        receivers = receivers or self.receivers
        room = self.users[:p["room"]]
        senders, others = room[:p["typing_senders"]], room[p["typing_senders"]:]
        parts = split(others, len(receivers))
        placement = [(self.driver, senders)] + list(zip(receivers, parts))
        workers = [w for w, _ in placement]
        conns = call_all([(w, "connect", dict(url=server.url, path="/ws/socket.io", users=us,
                                              concurrency=50))
                          for w, us in placement], timeout=60 + len(room) / 20)
        out: dict[str, Any] = {}
        try:
            if sum(c["failed"] for c in conns):
                errors: dict[str, int] = {}
                for c in conns:
                    for k, v in c["errors"].items():
                        errors[k] = errors.get(k, 0) + v
                raise BenchError(f"{server.kind}: {sum(c['failed'] for c in conns)} of "
                                 f"{len(room)} room members could not connect: {errors}")
            joined = call_all([(w, "emit_all", dict(event="user-join", data={}))
                               for w in workers], timeout=60)
            if sum(j["acked"] for j in joined) != len(room):
                raise BenchError(f"{server.kind}: user-join: {joined}")
            counts = [len(us) for _, us in placement]
            phases = [
                ("emit_fixed", "events", lambda ph: self.driver.send(
                    "http_emit", url=server.url, api_key=API_KEY, room=f"channel:{CHANNEL}",
                    phase=ph, mode="rate", rate=p["fixed_rate"],
                    duration_ms=int(p["fixed_duration"] * 1000))),
                ("emit_sat", "events", lambda ph: self.driver.send(
                    "http_emit", url=server.url, api_key=API_KEY, room=f"channel:{CHANNEL}",
                    phase=ph, mode="closed", count=p["sat_messages"],
                    concurrency=p["emit_concurrency"])),
                ("typing_fixed", "events:channel", lambda ph: self.driver.send(
                    "typing", channel=CHANNEL, senders=len(senders), phase=ph, mode="rate",
                    rate=p["fixed_rate"] / len(senders),
                    duration_ms=int(p["fixed_duration"] * 1000))),
                ("typing_sat", "events:channel", lambda ph: self.driver.send(
                    "typing", channel=CHANNEL, senders=len(senders), phase=ph, mode="closed",
                    count=p["sat_messages"] // len(senders))),
            ]
            for name, event, start in phases:
                if only and name not in only:
                    continue
                DEADLINE.check(name)
                ph = f"{name}-{server.kind}-{rnd}{tag}"
                call_all([(w, "listen", dict(event=event, phase=ph)) for w in workers],
                         timeout=10)
                meter = Meter(server, workers)
                ident = start(ph)
                sent_r = self.driver.recv(ident, timeout=p["fixed_duration"] + 120)
                sent = sent_r["sent"] - sent_r["failed"]  # messages the server took
                call_all([(w, "wait_rx", dict(
                    expected=sent * c, timeout_ms=int(DEADLINE.cap(60) * 1000), quiet_ms=2000))
                    for w, c in zip(workers, counts)], timeout=70)
                m = meter.done()
                cpu_s = m["server_cpu_s"]
                self.record_gen(name + tag, server.kind, m)
                got = call_all([(w, "collect", {}) for w in workers], timeout=30)
                hist = merge_hists([g["hist"] for g in got])
                received = sum(g["count"] for g in got)
                last = max((g["last"] for g in got if g["last"]), default=0)
                span = (last - sent_r["t0"]) / 1e6 if last else 0
                out[name] = {
                    "messages": sent, "expected": sent * len(room), "received": received,
                    "deliveries_per_s": received / span if span > 0 else None,
                    "p50_ms": percentile_ms(hist, 0.50), "p99_ms": percentile_ms(hist, 0.99),
                    "cpu_per_10k": 1e4 * cpu_s / received if received else None,
                    "server_cores": m["server_cores"],
                    "send_errors": sent_r.get("errors", {}),
                }
        finally:
            self.disconnect_all(workers)
        return out


# -------------------------------------------------------------- workers scaling ---

def appliance_ini(workers: int | None = None) -> str:
    """bench's INI, with `[server] workers = N` when asked (issue 18: the appliance's worker
    processes behind one port)."""
    if workers is None:
        return APPLIANCE_INI
    return APPLIANCE_INI.replace("workers = 1\n", f"workers = {workers}\n", 1)


def core_counts() -> list[int]:
    """1, 2 and all cores (deduplicated: {1, 2} on a 2-core machine)."""
    n = os.cpu_count() or 1
    return sorted({1, min(2, n), n})


def probe_appliance_workers(run_dir: Path) -> tuple[bool, str]:
    """Does this appliance know `[server] workers`? Asked of `appliance.py check-config`, which
    refuses an unknown option: nothing is assumed from the source."""
    ini = run_dir / "probe-workers.ini"
    ini.write_text(appliance_ini(min(2, os.cpu_count() or 1)))
    env = {**os.environ, "WEBUI_SECRET_KEY": SECRET, "RT_API_KEY": API_KEY}
    try:
        r = subprocess.run([str(VENV_PY), str(ROOT / "appliance.py"), "check-config",
                            "--config", str(ini), "--data-dir", str(run_dir / "probe-data")],
                           capture_output=True, text=True, timeout=DEADLINE.cap(60), cwd=ROOT,
                           env=env)
    except subprocess.TimeoutExpired:
        return False, "check-config did not answer within 60 s"
    if r.returncode == 0:
        return True, ""
    text = (r.stdout + r.stderr).strip().replace(str(ini), "<ini>")
    return False, (text.splitlines()[-1] if text else f"check-config exited {r.returncode}")


def block_scaling(bench: Bench) -> dict:
    """Fan-out deliveries/s (saturated HTTP emits and typing events) and echo round trips/s
    on 1, 2 and all cores: the appliance with `[server] workers = N` (without that option the
    block says so and measures nothing for it) and Node socket.io on node:cluster with N
    workers (@socket.io/sticky + @socket.io/cluster-adapter)."""
    counts = core_counts()
    ok, why = probe_appliance_workers(bench.run_dir)
    out: dict[str, Any] = {"cores": counts, "available": ok, "reason": why, "rounds": {},
                           "kinds": (["appliance"] if ok else []) + ["node-cluster"]}
    if not ok:
        log(f"workers scaling: appliance not available ({why})")
    p = bench.p
    for rnd in range(p["rounds"]):
        for kind in out["kinds"]:
            for n in counts:
                DEADLINE.check("workers scaling")
                log(f"workers scaling round {rnd + 1}: {kind}, {n} workers")
                server = Server(kind, bench.run_dir, f"workers{n}-{rnd}", ini=appliance_ini(n),
                                workers=n)
                try:
                    server.start()
                    bench.register(server, max(p["room"], p["rtt_clients"]))
                    put_channel(server, bench.users[:p["room"]])
                    tag = f"-{'cl' if kind == 'node-cluster' else 'w'}{n}"
                    r = bench.block_fanout(server, rnd, tag=tag, only=("emit_sat", "typing_sat"))
                    r["echo"] = bench.block_rtt(server, rnd, echo_only=True, tag=tag)["echo"]
                except BenchError as exc:
                    # one failed configuration is reported, the others still run
                    DEADLINE.check("workers scaling")
                    log(f"  failed: {exc}")
                    out.setdefault("errors", []).append(f"{LABELS[kind]}, {n} workers, round "
                                                        f"{rnd + 1}: {exc}")
                    continue
                finally:
                    server.stop()
                out["rounds"].setdefault(f"{kind}/{n}", []).append(r)
                log(f"  emit {fmt(r['emit_sat']['deliveries_per_s'])}/s, typing "
                    f"{fmt(r['typing_sat']['deliveries_per_s'])}/s, echo "
                    f"{fmt(r['echo']['rate'])}/s")
    return out


SCALING_METRICS = [("emit_sat.deliveries_per_s", "fan-out deliveries/s (HTTP emit)"),
                   ("typing_sat.deliveries_per_s", "fan-out deliveries/s (typing)"),
                   ("echo.rate", "echo round trips/s"),
                   ("echo.cpu_per_10k", "echo CPU per 10k (s)")]


def render_scaling(scaling: dict, summary: dict, info: dict) -> str:
    counts = ", ".join(str(n) for n in scaling["cores"])
    refs = [kind for kind in ("node", "node-uws")
            if summary.get("rtt.echo.rate", {}).get(kind) is not None
            or summary.get("fanout.emit_sat.deliveries_per_s", {}).get(kind) is not None]
    lines = [f"## Workers scaling: {counts} cores", ""]
    if not scaling["available"]:
        lines += ["The appliance: **not available** — it has no `[server] workers` option "
                  f"(`appliance.py check-config`: {scaling['reason']}). Once it has, this block "
                  "runs the appliance too, with "
                  f"`[server] workers` = {counts}.", ""]
    lines += ["Saturated fan-out (HTTP emit and typing, room of the fan-out block) and echo "
              "(the echo phase of the rtt block), one fresh server per worker count, median "
              "over rounds; ×1 = the same figure with 1 worker (emit / typing / echo). "
              f"`node socket.io cluster (ws)`: socket.io {info.get('peers.socket.io')} on "
              f"node:cluster, @socket.io/sticky {info.get('cluster.sticky')} in the primary, "
              f"@socket.io/cluster-adapter {info.get('cluster.adapter')} between the workers "
              "(the primary's CPU counts)."
              + (" The single-process Node servers of the main table for reference." if refs
                 else "")
              + " On a machine with as many cores as workers the load generator shares them: "
              "compare the curves, not the ceilings.", "",
              "| server | workers | " + " | ".join(label for _, label in SCALING_METRICS)
              + " | ×1 | server cores used (emit / typing / echo) |",
              "|---|---:|" + "---:|" * len(SCALING_METRICS) + "---:|---:|"]
    for kind in scaling["kinds"]:
        base: dict[str, float | None] = {}
        for n in scaling["cores"]:
            rounds = scaling["rounds"].get(f"{kind}/{n}", [])
            vals = {path: med([pick(r, path) for r in rounds]) for path, _ in SCALING_METRICS}
            if n == scaling["cores"][0]:
                base = vals
            x1 = " / ".join(ratio(vals[path], base.get(path)) for path, _ in SCALING_METRICS[:3])
            cores = " / ".join(fmt(med([pick(r, f"{ph}.server_cores") for r in rounds]))
                               for ph in ("emit_sat", "typing_sat", "echo"))
            lines.append(f"| {LABELS[kind]} | {n} | "
                         + " | ".join(fmt(vals[path]) for path, _ in SCALING_METRICS)
                         + f" | {x1} | {cores} |")
    for kind in refs:
        cells = [fmt(summary.get(f"{'rtt' if path.startswith('echo') else 'fanout'}.{path}",
                                 {}).get(kind)) for path, _ in SCALING_METRICS]
        lines.append(f"| {LABELS[kind]} | 1 | " + " | ".join(cells) + " | – | – |")
    short = []
    for key, rounds in scaling["rounds"].items():
        for r in rounds:
            for phase in ("emit_sat", "typing_sat"):
                if r[phase]["received"] < r[phase]["expected"]:
                    short.append(f"{key} {phase} {r[phase]['received']}/{r[phase]['expected']}")
            if r["echo"]["failed"] or r["echo"]["lost"]:
                short.append(f"{key} echo failed/lost {r['echo']['failed']}/{r['echo']['lost']}")
    if scaling["rounds"]:
        lines += ["", "Deliveries check: " + ("every expected delivery and ack arrived." if not
                                               short else "MISSING: " + "; ".join(short) + ".")]
    if scaling.get("errors"):
        lines += ["", "Failed runs (left out of the medians):", ""]
        lines += [f"- {e}" for e in scaling["errors"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- report ---

def med(values: list) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


# (block, path, label, unit, better) ; path = key or phase.key
METRICS = [
    ("connect", "mem_per_conn_kib", "idle memory per authenticated connection", "KiB", "lower"),
    ("connect", "connect_rate", "connect rate incl. JWT verification", "conn/s", "higher"),
    ("connect", "connect_cpu_ms", "server CPU per connect", "ms", "lower"),
    ("rtt", "p50_ms", "acked round trip p50 @ fixed rate", "ms", "lower"),
    ("rtt", "p99_ms", "acked round trip p99 @ fixed rate", "ms", "lower"),
    ("rtt", "cpu_per_10k", "server CPU per 10k acked requests", "s", "lower"),
    ("rtt", "echo.rate", "echo: acked round trips/s (saturated)", "msg/s", "higher"),
    ("rtt", "echo.cpu_per_10k", "echo: server CPU per 10k acked round trips (saturated)", "s", "lower"),
    ("fanout", "emit_sat.deliveries_per_s", "fan-out via HTTP emit: deliveries/s (saturated)", "msg/s", "higher"),
    ("fanout", "emit_fixed.p50_ms", "fan-out via HTTP emit: latency p50 @ fixed rate", "ms", "lower"),
    ("fanout", "emit_fixed.p99_ms", "fan-out via HTTP emit: latency p99 @ fixed rate", "ms", "lower"),
    ("fanout", "emit_sat.p99_ms", "fan-out via HTTP emit: latency p99 saturated", "ms", "lower"),
    ("fanout", "emit_sat.cpu_per_10k", "server CPU per 10k deliveries (HTTP emit)", "s", "lower"),
    ("fanout", "typing_sat.deliveries_per_s", "fan-out via typing events: deliveries/s (saturated)", "msg/s", "higher"),
    ("fanout", "typing_fixed.p50_ms", "fan-out via typing: latency p50 @ fixed rate", "ms", "lower"),
    ("fanout", "typing_fixed.p99_ms", "fan-out via typing: latency p99 @ fixed rate", "ms", "lower"),
    ("fanout", "typing_sat.p99_ms", "fan-out via typing: latency p99 saturated", "ms", "lower"),
    ("fanout", "typing_sat.cpu_per_10k", "server CPU per 10k deliveries (typing)", "s", "lower"),
]


def pick(d: dict, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def summarise(bench: Bench) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for block, path, *_ in METRICS:
        for kind in bench.servers:
            rounds = bench.raw.get(block, {}).get(kind, [])
            out.setdefault(f"{block}.{path}", {})[kind] = med([pick(r, path) for r in rounds])
    return out


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                                  cwd=ROOT).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"

    versions = run([str(VENV_PY), "-c", (
        "import sys, importlib.metadata as m; print(sys.version.split()[0], *[m.version(p) "
        "for p in ('python-socketio','python-engineio','tornado','uvicorn','websockets',"
        "'uvloop')])")]).split()
    sio_pkg = NODE_MODULES / "socket.io" / "package.json"
    cli_pkg = NODE_MODULES / "socket.io-client" / "package.json"
    names = ["python", "python-socketio", "python-engineio", "tornado", "uvicorn",
             "websockets", "uvloop"]
    info = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "node": run(["node", "--version"]),
        "socket.io": json.loads(sio_pkg.read_text())["version"] if sio_pkg.exists() else "?",
        "socket.io-client": json.loads(cli_pkg.read_text())["version"] if cli_pkg.exists() else "?",
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        # what was measured: the commit, and whether the appliance's code had changes on top
        "commit": run(["git", "rev-parse", "--short=10", "HEAD"]),
        "appliance_changes": len([line for line in run(
            ["git", "status", "--porcelain", "--", "rt", "appliance.py"]).splitlines() if line]),
        **peer_packages(),
    }
    info.update(dict(zip(names, versions)))
    return info


def peer_packages() -> dict:
    """What bench/peers/node_modules holds: socket.io and the uWebSockets.js binaries (the npm
    package, its version and the uWebSockets.js commit it was built from, when it says)."""
    def version(name: str) -> str | None:
        pkg = PEER_MODULES / name / "package.json"
        try:
            return json.loads(pkg.read_text())["version"]
        except (OSError, ValueError, KeyError):
            return None
    commit = None
    try:
        commit = (PEER_MODULES / UWS_PACKAGE / "source_commit").read_text().strip() or None
    except OSError:
        pass
    return {"peers.socket.io": version("socket.io"),
            "uws.package": UWS_PACKAGE, "uws.version": version(UWS_PACKAGE),
            "uws.source_commit": commit,
            "cluster.sticky": version("@socket.io/sticky"),
            "cluster.adapter": version("@socket.io/cluster-adapter")}


def uws_line(info: dict) -> str:
    commit = info.get("uws.source_commit")
    return (f"socket.io {info.get('peers.socket.io')} on uWebSockets.js from the npm package "
            f"`{info.get('uws.package')}@{info.get('uws.version')}` (a third-party republish of "
            "uWebSockets.js: the official name is not on the npm registry and "
            "`@btc-vision/uwebsockets.js` needs glibc 2.38"
            + (f"; built from uWebSockets.js commit {commit[:12]}" if commit else "") + ")")


def render(bench: Bench, info: dict, mode: str, summary: dict, elapsed: float,
           gen_check: dict | None) -> str:
    p = bench.p
    srv = bench.servers
    lines = [
        f"# rt-appliance benchmark — {info['date']} ({mode})",
        "",
        f"- machine: `nproc` = {info['nproc']}, CPU {info['cpu_model']}, kernel "
        f"{info['kernel']}, load average at start {' '.join(info['loadavg_at_start'])}",
        f"- appliance: commit {info.get('commit')}"
        + (f" with uncommitted changes in {info['appliance_changes']} file(s) of rt/ and "
           "appliance.py (the working tree was measured)" if info.get("appliance_changes")
           else ""),
        f"- Python {info.get('python')} (python-socketio {info.get('python-socketio')}, "
        f"python-engineio {info.get('python-engineio')}, tornado {info.get('tornado')}, "
        f"uvicorn {info.get('uvicorn')}, websockets {info.get('websockets')}, uvloop "
        f"{info.get('uvloop')}); Node {info['node']} (socket.io {info['socket.io']}, "
        f"socket.io-client {info['socket.io-client']})"
        + (f"; `node-uws`: {uws_line(info)}" if "node-uws" in srv else ""),
        f"- {p['rounds']} rounds, servers alternated within each scenario, median shown; "
        f"{len(bench.receivers)} receiving load processes + 1 driver; run took "
        f"{elapsed:.0f} s; websocket compression off on every server (python-socketio+uvicorn "
        f"is started with ws_per_message_deflate=False; `(deflate)` = uvicorn's default)",
        f"- idle connections: {p['conns']}; acked round trip: `heartbeat` with ack, "
        f"{p['rtt_rate']} req/s over {p['rtt_clients']} clients for {p['rtt_duration']:g} s; "
        f"echo: the same `heartbeat` with ack saturated, {p['rtt_clients']} clients x "
        f"{p.get('echo_inflight')} in flight for {p.get('echo_duration'):g} s (the appliance "
        "has no `echo` event; `heartbeat`'s ack is the same round trip on every server); "
        f"fan-out: room of {p['room']} clients, fixed rate {p['fixed_rate']} msg/s for "
        f"{p['fixed_duration']:g} s, saturated = {p['sat_messages']} messages "
        f"({p['emit_concurrency']} HTTP emits in flight / {p['typing_senders']} typing "
        f"senders, each waiting for its ack)",
        "",
        "| metric | unit | better | " + " | ".join(LABELS[s] for s in srv)
        + "".join(f" | appliance/{LABELS[s]}" for s in srv if s != "appliance") + " |",
        "|---|---|---|" + "---:|" * len(srv) + "---:|" * sum(1 for s in srv if s != "appliance"),
    ]
    for block, path, label, unit, better in METRICS:
        vals = summary[f"{block}.{path}"]
        row = f"| {label} | {unit} | {better} | " + " | ".join(fmt(vals.get(s)) for s in srv)
        if "appliance" in srv:
            row += "".join(f" | {ratio(vals.get('appliance'), vals.get(s))}"
                           for s in srv if s != "appliance")
        lines.append(row + " |")
    # deliveries actually made, so a server that drops messages cannot look fast
    lines += ["", "Deliveries received / expected (all rounds):", ""]
    short: list[str] = []
    for kind in srv:
        parts = []
        for phase in ("emit_fixed", "emit_sat", "typing_fixed", "typing_sat"):
            done = [r[phase] for r in bench.raw.get("fanout", {}).get(kind, []) if phase in r]
            rec = sum(r["received"] for r in done)
            exp = sum(r["expected"] for r in done)
            parts.append(f"{phase} {rec}/{exp}")
            if rec < exp:
                short.append(f"{LABELS[kind]} {phase} {rec}/{exp}")
        conn = bench.raw.get("connect", {}).get(kind, [])
        failed = sum(r["failed"] for r in conn)
        rtt = bench.raw.get("rtt", {}).get(kind, [])
        rtt_bad = sum(r.get("failed", 0) + r.get("lost", 0) for r in rtt)
        echo = [r["echo"] for r in rtt if "echo" in r]
        echo_bad = sum(r["failed"] + r["lost"] for r in echo)
        echo_ok = sum(r["acked"] for r in echo)
        echo_sent = sum(r["sent"] for r in echo)
        ext = conn[0].get("ws_extensions") if conn else None
        lines.append(f"- {LABELS[kind]}: {', '.join(parts)}; refused connects {failed}; "
                     f"failed/lost acks {rtt_bad}; echo acked {echo_ok}/{echo_sent}, failed/"
                     f"lost {echo_bad}; websocket extensions negotiated: {ext or 'none'}")
        if failed:
            short.append(f"{LABELS[kind]} refused {failed} connects")
        if rtt_bad or echo_bad:
            short.append(f"{LABELS[kind]} failed/lost acks {rtt_bad} (rtt) {echo_bad} (echo)")
    lines += ["", "Deliveries check: " + (
        "every expected delivery and ack arrived on every server." if not short else
        "MISSING: " + "; ".join(short) + ".")]
    # load generator's own CPU
    lines += ["", "CPU during each phase, in cores (median over rounds): server / load "
              "generator, all processes (busiest one) / rest of the machine (other work, "
              "softirq). Saturated phases are marked `*`; their throughput is the server's "
              "only where the server used >= 0.85 of a core, otherwise it is a lower bound set "
              "by the machine.", "",
              "| phase | " + " | ".join(LABELS[s] for s in srv) + " |",
              "|---|" + "---:|" * len(srv)]
    saturated = {"connect", "echo", "emit_sat", "typing_sat"}
    worst_proc = worst_total = 0.0
    unbound: list[str] = []
    for phase, per in bench.gen.items():
        if re.search(r"-(w|cl)\d+$", phase):
            continue  # the workers-scaling block: its own table
        cells = []
        for kind in srv:
            g = per.get(kind, [])
            if not g:
                cells.append("–")
                continue
            sc = med([x["server_cores"] for x in g])
            mx, tot = med([x["gen_max_worker"] for x in g]), med([x["gen_total"] for x in g])
            other = med([x["other_cores"] for x in g])
            worst_proc, worst_total = max(worst_proc, mx), max(worst_total, tot)
            mark = ""
            if phase.split("-")[0] in saturated:
                mark = " *" if sc >= 0.85 else " * (lower bound)"
                if sc < 0.85:
                    unbound.append(f"{phase} {LABELS[kind]}")
            cells.append(f"{fmt(sc)} / {fmt(tot)} ({fmt(mx)}) / {fmt(other)}{mark}")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Load generator: busiest process {worst_proc:.2f} cores, all load processes together "
        f"at most {worst_total:.2f} cores in a phase. "
        + ("No single load process came near a core. " if worst_proc < 0.7 else
           "A load process came near a full core: it may have set the pace. ")
        + (f"On this {os.cpu_count()}-core machine the generator and the server share the "
           "cores, so where the server stayed below 0.85 of a core in a saturated phase the "
           "figure is bounded by the machine, not by the server: "
           + ", ".join(unbound) + ". Compare CPU per message there." if unbound else
           "Every saturated phase kept its server at >= 0.85 of a core: the figures are the "
           "servers' own."))
    if gen_check:
        lines += ["", f"Generator check: fan-out rerun with {gen_check['workers']} receiving "
                  "load processes instead of "
                  f"{len(bench.receivers)} (one round; saturated deliveries/s):", "",
                  "| server | emit, normal | emit, doubled | typing, normal | typing, doubled |",
                  "|---|---:|---:|---:|---:|"]
        for kind in srv:
            d = gen_check["results"].get(kind)
            if not d:
                continue
            lines.append(
                f"| {LABELS[kind]} | {fmt(summary['fanout.emit_sat.deliveries_per_s'][kind])} | "
                f"{fmt(d['emit_sat']['deliveries_per_s'])} | "
                f"{fmt(summary['fanout.typing_sat.deliveries_per_s'][kind])} | "
                f"{fmt(d['typing_sat']['deliveries_per_s'])} |")
        raised = []
        for kind in srv:
            d = gen_check["results"].get(kind)
            for phase in ("emit_sat", "typing_sat"):
                rounds = [pick(r, f"{phase}.deliveries_per_s")
                          for r in bench.raw.get("fanout", {}).get(kind, [])]
                best = max([v for v in rounds if v], default=None)
                more = d and d[phase]["deliveries_per_s"]
                if best and more and more > 1.05 * best:
                    raised.append(f"{phase} {LABELS[kind]} (best round {fmt(best)} → {fmt(more)})")
        lines += ["", "With twice the load processes no saturated figure beat the best normal "
                  "round by more than 5 %: the number of load processes was not the limit."
                  if not raised else
                  "With twice the load processes these beat every normal round by more than "
                  "5 %: " + ", ".join(raised) + " — there the load generator (or noise from "
                  "other work, see the rest-of-machine column) may have limited the figure."]
    if bench.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in bench.notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ main ---

def peer_modules_ok(names: tuple[str, ...] = ("socket.io", UWS_PACKAGE)) -> bool:
    return all((PEER_MODULES / name / "package.json").exists() for name in names)


def preflight(install: bool, servers: tuple[str, ...] | list[str] = SERVERS,
              cluster: bool = False) -> None:
    if not VENV_PY.exists():
        raise BenchError(f"{VENV_PY} missing: run `make install` first")
    if shutil.which("node") is None:
        raise BenchError("node is not on PATH")
    if not (NODE_MODULES / "socket.io").exists() or not (NODE_MODULES / "socket.io-client").exists():
        raise BenchError("tests/node/node_modules lacks socket.io: run `make node-deps`")
    if ("node-uws" in servers and not peer_modules_ok()) or (
            cluster and not peer_modules_ok(CLUSTER_PACKAGES)):
        if not install:
            raise BenchError("bench/peers/node_modules lacks socket.io, uWebSockets.js or the "
                             "cluster packages: run "
                             "`cd bench/peers && npm ci` (or `make bench`), or pass --install")
        if shutil.which("npm") is None:
            raise BenchError("npm is not on PATH (needed for bench/peers)")
        log("installing bench/peers (npm ci: socket.io, uWebSockets.js)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       check=True, timeout=600, cwd=PEERS)
    probe = subprocess.run([str(VENV_PY), "-c", "import uvicorn, websockets, httptools"],
                           capture_output=True, timeout=60)
    if probe.returncode != 0:
        if not install:
            raise BenchError("uvicorn is not in .venv: run `.venv/bin/python -m pip install "
                             "-c constraints.txt -r bench/requirements.txt` or pass --install")
        log("installing bench/requirements.txt into .venv")
        subprocess.run([str(VENV_PY), "-m", "pip", "install", "--quiet", "-c",
                        str(ROOT / "constraints.txt"), "-r", str(BENCH / "requirements.txt")],
                       check=True, timeout=600, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run (~3 min)")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (default 3)")
    ap.add_argument("--workers", type=int, default=2,
                    help="receiving load-generator processes (default 2; plus one driver)")
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help="comma-separated, from appliance,pysio,node,node-uws,pysio-deflate "
                         "(node-uws: socket.io on uWebSockets.js; pysio-deflate: uvicorn's "
                         "out-of-the-box permessage-deflate)")
    ap.add_argument("--blocks", default="connect,rtt,fanout,flood",
                    help="comma-separated subset of connect,rtt,fanout,flood (flood: the "
                         "appliance only, bench/flood.py)")
    ap.add_argument("--gen-check", action=argparse.BooleanOptionalAction, default=None,
                    help="rerun fan-out with twice the load processes (default: full mode only)")
    ap.add_argument("--workers-scaling", action=argparse.BooleanOptionalAction, default=None,
                    help="the appliance with [server] workers = 1, 2, all cores: saturated "
                         "fan-out and echo (default: full mode only; 'not available' when the "
                         "appliance has no such option)")
    ap.add_argument("--install", action="store_true",
                    help="pip-install bench/requirements.txt into .venv and `npm ci` "
                         "bench/peers when missing")
    ap.add_argument("--name", help="results/<date>-NAME[-quick].md and .json (raw figures) "
                                   "instead of results/<date>[-quick].md and latest.json")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results")
    for key in ("conns", "room", "deadline"):
        ap.add_argument(f"--{key}", type=int, help=f"override the profile's {key}")
    args = ap.parse_args(argv)

    mode = "quick" if args.quick else "full"
    prof = dict(PROFILES[mode])
    for key in ("rounds", "conns", "room", "deadline"):
        if getattr(args, key, None):
            prof[key] = getattr(args, key)
    if args.gen_check is not None:
        prof["gen_check"] = args.gen_check
    if args.workers_scaling is not None:
        prof["scaling"] = args.workers_scaling
    if args.name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        ap.error("--name: letters, digits, '.', '_', '-'")
    servers = [s for s in args.servers.split(",") if s]
    blocks = [b for b in args.blocks.split(",") if b]
    if any(s not in SERVERS + OPTIONAL_SERVERS for s in servers) or any(
            b not in ("connect", "rtt", "fanout", "flood") for b in blocks):
        ap.error("unknown server or block")

    global DEADLINE
    DEADLINE = Deadline(prof["deadline"])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="rt-bench-"))
    bench = None
    failure = None
    gen_check = None
    flood_block = None
    scaling = None
    info = {}
    try:
        preflight(args.install, servers, cluster=prof["scaling"])
        info = machine_info()
        log(f"{mode} run, servers {servers}, logs in {run_dir}")
        bench = Bench(prof, run_dir, args.workers, servers)

        if "connect" in blocks:
            for rnd in range(prof["rounds"]):
                for kind in servers:
                    DEADLINE.check("connect")
                    log(f"connect/memory round {rnd + 1} {kind}")
                    r = bench.block_connect(kind, rnd)
                    bench.record("connect", kind, r)
                    log(f"  {r['connected']} conns, {fmt(r['connect_rate'])} conn/s, "
                        f"{fmt(r['mem_per_conn_kib'])} KiB/conn")

        if "rtt" in blocks or "fanout" in blocks:
            live = {}
            for kind in servers:
                live[kind] = Server(kind, run_dir, "main").start()
                bench.register(live[kind], max(prof["room"], prof["rtt_clients"]))
                put_channel(live[kind], bench.users[:prof["room"]])
            try:
                if "rtt" in blocks:
                    for rnd in range(prof["rounds"]):
                        for kind in servers:
                            DEADLINE.check("rtt")
                            r = bench.block_rtt(live[kind], rnd)
                            bench.record("rtt", kind, r)
                            log(f"rtt round {rnd + 1} {kind}: p50 {fmt(r['p50_ms'])} ms, "
                                f"p99 {fmt(r['p99_ms'])} ms, {fmt(r['rate'])} req/s, "
                                f"cpu/10k {fmt(r['cpu_per_10k'])} s; echo "
                                f"{fmt(r['echo']['rate'])}/s, cpu/10k "
                                f"{fmt(r['echo']['cpu_per_10k'])} s")
                if "fanout" in blocks:
                    for rnd in range(prof["rounds"]):
                        for kind in servers:
                            DEADLINE.check("fanout")
                            r = bench.block_fanout(live[kind], rnd)
                            bench.record("fanout", kind, r)
                            log(f"fanout round {rnd + 1} {kind}: " + ", ".join(
                                f"{ph} {fmt(v['deliveries_per_s'])}/s p99 {fmt(v['p99_ms'])} ms"
                                for ph, v in r.items()))
                    if prof["gen_check"]:
                        bench.extra = [Worker(f"x{i}", run_dir) for i in range(args.workers)]
                        doubled = bench.receivers + bench.extra
                        gen_check = {"workers": len(doubled), "results": {}}
                        for kind in servers:
                            DEADLINE.check("generator check")
                            r = bench.block_fanout(live[kind], 0, receivers=doubled,
                                                   tag="-doubled",
                                                   only=("emit_sat", "typing_sat"))
                            gen_check["results"][kind] = r
                            log(f"generator check {kind}: emit_sat "
                                f"{fmt(r['emit_sat']['deliveries_per_s'])}/s, typing_sat "
                                f"{fmt(r['typing_sat']['deliveries_per_s'])}/s")
            finally:
                for s in live.values():
                    s.stop()
        if prof["scaling"] and "appliance" in servers:
            scaling = block_scaling(bench)
        if "flood" in blocks and "appliance" in servers:
            log("flood block (appliance)")
            flood_block = flood.run_block(sys.modules[__name__], mode, run_dir, args.rounds)
    except KeyboardInterrupt as exc:
        failure = f"interrupted ({exc})"
    except BenchError as exc:
        failure = str(exc)
    except Exception as exc:  # noqa: BLE001 - report what was measured, then fail
        import traceback
        traceback.print_exc()
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        if bench is not None:
            for w in bench.all_workers():
                w.close()
        end_all()

    if bench is None or not (bench.raw or flood_block or scaling):
        log(f"no results: {failure}")
        return 1
    if failure:
        bench.notes.append(f"INCOMPLETE RUN: {failure}")
    elapsed = time.monotonic() - started
    day = dt.date.today().isoformat()
    flood_summary = flood_text = None
    if flood_block:
        flood_summary = flood.summarise(sys.modules[__name__], flood_block)
        flood_text = flood.render(sys.modules[__name__], flood_block, flood_summary)
    summary: dict = {}
    if bench.raw:
        summary = summarise(bench)
        text = render(bench, info, mode, summary, elapsed, gen_check)
        if scaling:
            text += "\n" + render_scaling(scaling, summary, info)
        if flood_text:
            text += "\n" + flood_text
    else:  # the flood block and/or the workers-scaling block alone
        what = " and ".join(x for x, on in (("flood", flood_text), ("workers scaling", scaling))
                            if on)
        text = (f"# {what} — {day} ({mode})\n\nMachine: {info.get('cpu_model')}, "
                f"{info.get('nproc')} cores, load average at the end "
                f"{os.getloadavg()[0]:.2f}; appliance commit {info.get('commit')}"
                + (f" with uncommitted changes in {info['appliance_changes']} file(s)"
                   if info.get("appliance_changes") else "") + ".\n\n" + (flood_text or "")
                + ("\n" if flood_text and scaling else "")
                + (render_scaling(scaling, summary, info) if scaling else "")
                + "".join(f"\n- {n}" for n in bench.notes))
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        suffix = "" if mode == "full" else f"-{mode}"
        named = f"-{args.name}" if args.name else ""
        md = RESULTS / (f"{day}{named}{suffix}.md" if bench.raw or not flood_block
                        else f"{day}-flood{named}{suffix}.md")
        md.write_text(text)
        raw = md.with_suffix(".json") if args.name else RESULTS / "latest.json"
        raw.write_text(json.dumps({
            "mode": mode, "profile": prof, "machine": info, "servers": servers,
            "elapsed_s": elapsed, "complete": failure is None, "notes": bench.notes,
            "median": summary, "rounds": bench.raw, "generator_cpu": bench.gen,
            "generator_check": gen_check, "markdown": md.name, "workers_scaling": scaling,
            "flood": flood_block and {"summary": flood_summary, **flood_block},
        }, indent=1, sort_keys=True))
        log(f"wrote {md.relative_to(ROOT)} and {raw.relative_to(ROOT)}")
    if failure is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        log(f"run failed: {failure}; server and load logs kept in {run_dir}")
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
