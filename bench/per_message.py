#!/usr/bin/env python3
"""Server CPU per acked round trip, with the batching fixed: the per-message cost alone.

    python bench/per_message.py                        # appliance, node, node-uws
    python bench/per_message.py --base ../old-checkout # and an older appliance beside it

Results: the table printed and written to bench/results/<date>-fixed-batches[-NAME].md.

run.py's echo phase drives the servers with socket.io-client from Node processes that share
the machine's cores with the server; how many messages arrive per read (and so how many
acks leave per write, and how many system calls each message shares) moves with the
scheduling, run to run. Here one process drives plain websockets: every client writes a
batch of `--batch` `heartbeat` events with ack ids in one write, and the next batch only
after all of its acks are back. Every server gets the same reads of the same sizes, and the
server's CPU time (utime + stime of its process tree) per acknowledged event compares the
work each does per message. The servers run at the same time and are driven in turn, one
slice of `--seconds` each per round, so that a change in the machine's load meets all of
them alike; the figure is the total CPU over the total acks of all rounds.

Standard library only, like run.py (whose servers, users and API calls it uses).
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run  # bench/run.py, next to this script

MASK = b"\x5a\x17\xc3\x81"


def client_frame(text: str) -> bytes:
    """One masked text frame, as a client sends it."""
    data = text.encode()
    size = len(data)
    if size < 126:
        head = struct.pack("!BB", 0x81, 0x80 | size)
    else:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, size)
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(data))


def token(user: str) -> str:
    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    signed = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64({'id': user, 'exp': int(time.time()) + 3600})}"
    sig = hmac.new(run.SECRET.encode(), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


PONG = client_frame("3")


class Client:
    """One websocket, spoken to by hand: Engine.IO open, namespace CONNECT, then batches."""

    def __init__(self, port: int, user: str, timeout: float):
        self.sock = socket.create_connection((run.HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws/socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {run.HOST}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise run.BenchError(f"websocket refused: {head[:200]!r}")
        self.buf = bytearray(rest)
        self.frames(1)  # Engine.IO open
        self.sock.sendall(client_frame("40" + json.dumps({"token": token(user)})))
        answer = self.frames(1)[0]
        if not answer.startswith(b"40{"):
            raise run.BenchError(f"CONNECT refused: {answer[:200]!r}")

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise run.BenchError("the server closed a connection")
        self.buf += data

    def frames(self, count: int) -> list[bytes]:
        """The next `count` server frames' payloads (server frames are unmasked)."""
        out: list[bytes] = []
        buf = self.buf
        while len(out) < count:
            if len(buf) >= 2:
                size, pos = buf[1] & 0x7F, 2
                if size == 126 and len(buf) >= 4:
                    size, pos = int.from_bytes(buf[2:4], "big"), 4
                if size < 126 and len(buf) >= pos + size:
                    out.append(bytes(buf[pos:pos + size]))
                    del buf[:pos + size]
                    continue
            self._fill()
            buf = self.buf
        return out


class Target:
    """One server with its connected clients."""

    def __init__(self, label: str, server: run.Server, clients: list[Client]):
        self.label, self.server, self.clients = label, server, clients
        self.cpu_s, self.acks = 0.0, 0
        self.slices: list[float] = []  # µs per ack, one per slice


def drive(target: Target, batch: bytes, per_batch: int, seconds: float) -> int:
    """Batches on every client in turn until `seconds` have passed; the acks received."""
    acks, stop = 0, time.monotonic() + seconds
    while time.monotonic() < stop:
        for client in target.clients:
            client.sock.sendall(batch)
        for client in target.clients:
            due = per_batch
            while due:
                payload = client.frames(1)[0]
                if payload == b"2":  # the server's Engine.IO ping
                    client.sock.sendall(PONG)
                    continue
                if not payload.startswith(b"43"):
                    raise run.BenchError(f"{target.label}: not an ack: {payload[:100]!r}")
                due -= 1
            acks += per_batch
    return acks


def start(kind: str, root: Path, run_dir: Path, tag: str, users: list[str],
          timeout: float) -> Target:
    run.ROOT = root  # Server.command takes the appliance (and its .venv) from run.ROOT
    run.VENV_PY = root / ".venv" / "bin" / "python"
    server = run.Server(kind, run_dir, tag)
    command = server.command()
    if kind == "appliance":  # each appliance its own data directory
        command[command.index("--data-dir") + 1] = str(run_dir / f"data-{tag}")
    server.command = lambda: command  # type: ignore[method-assign]
    server.start()
    run.register_users(server, users)
    clients = [Client(server.port, user, timeout) for user in users]
    label = kind
    if kind == "appliance":  # which code: the commit, "-dirty" with uncommitted changes
        described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root,
                                   capture_output=True, text=True, timeout=30)
        label += f" {described.stdout.strip() or '(not a git checkout)'}"
    return Target(label + (f" ({tag})" if tag != kind else ""), server, clients)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="appliance,node,node-uws")
    ap.add_argument("--base", type=Path, help="another checkout of the appliance (with its "
                    "own .venv, or a link to this one's) measured beside this one")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="events per write of a client")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=1.5, help="one slice of a round")
    ap.add_argument("--name", help="results/<date>-fixed-batches-NAME.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    here = run.ROOT
    kinds = [kind for kind in args.servers.split(",") if kind]
    unknown = set(kinds) - {"appliance", "node", "node-uws"}
    if unknown:
        ap.error(f"unknown servers: {', '.join(sorted(unknown))} (appliance, node, node-uws)")
    run.preflight(install=False, servers=kinds)
    run_dir = Path(tempfile.mkdtemp(prefix="rt-per-message-"))
    users = [f"pm{i:04d}" for i in range(args.clients)]
    plan = [(kind, here, kind) for kind in kinds]
    if args.base is not None:
        plan.insert(0, ("appliance", args.base.resolve(), "base"))
    targets: list[Target] = []
    batch = b"".join(client_frame(f'42{i}["heartbeat",{{}}]') for i in range(args.batch))
    try:
        for kind, root, tag in plan:
            targets.append(start(kind, root, run_dir, tag, users, timeout=30))
        for target in targets:  # warm-up: code paths, first allocations
            drive(target, batch, args.batch, 1.0)
        for rnd in range(args.rounds):
            for target in targets:
                pids = target.server.pids()
                cpu0 = run.cpu_seconds(pids)
                acks = drive(target, batch, args.batch, args.seconds)
                used = run.cpu_seconds(pids) - cpu0
                target.cpu_s += used
                target.acks += acks
                target.slices.append(1e6 * used / acks)
            run.log(f"round {rnd + 1}/{args.rounds}: " + ", ".join(
                f"{t.label} {t.slices[-1]:.2f} µs" for t in targets))
    finally:
        for target in targets:
            for client in target.clients:
                client.sock.close()
            target.server.stop()
        run.end_all()
    shutil.rmtree(run_dir, ignore_errors=True)
    ref = next((t for t in targets if t.server.kind == "node"), None)
    lines = [
        f"# Server CPU per acked round trip, fixed batches — {dt.date.today().isoformat()}",
        "",
        f"`bench/per_message.py --clients {args.clients} --batch {args.batch} --rounds "
        f"{args.rounds} --seconds {args.seconds:g}`: {args.clients} websockets, each writing "
        f"{args.batch} `heartbeat` events with ack ids at once and the next {args.batch} "
        "when all acks are back; the servers driven in turn, one slice each per round. "
        f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end.",
        "",
        "| server | CPU per ack (µs), all rounds | median slice | fastest slice | acks | "
        "/ node (ws) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in targets:
        per = 1e6 * t.cpu_s / t.acks if t.acks else float("nan")
        rel = per / (1e6 * ref.cpu_s / ref.acks) if ref is not None and ref.acks else None
        lines.append(f"| {t.label} | {per:.2f} | {statistics.median(t.slices):.2f} | "
                     f"{min(t.slices):.2f} | {t.acks:,} | "
                     f"{f'{rel:.2f}' if rel is not None else '—'} |")
    run.report("\n".join(lines) + "\n",
               "fixed-batches" + (f"-{args.name}" if args.name else ""),
               write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
