#!/usr/bin/env python3
"""What joining a large collaborative document costs everybody else: one appliance, a Yjs
document of 0.5, 2, 8 and 32 MB, and another client probing the server with acked round
trips all the while.

    .venv/bin/python bench/documents.py             # ~2 min: 0.5, 2, 8, 32 MB
    .venv/bin/python bench/documents.py --sizes 0.5,2 --joins 2

For each size the document is written by one editor as a real editor would (many inserts at
scattered positions by several clients, sent as `ydoc:document:update`s), then the appliance
is restarted so that the first join loads it from the store (cold); two more joins follow
while the first joiner stays (warm). Per join: the time from `ydoc:document:join` to the
`ydoc:document:state` in hand (the client's decoding included), and the longest acked round
trip of the probing client (a separate process, `heartbeat` every 12 ms) while the join ran,
which is how long the server's event loop was unavailable to others, and the CPU time the
server's event-loop thread used during the join (from /proc/PID/task/PID/schedstat, in ns):
the sum of every pause it could have caused, whatever else the machine was running, where
a round trip also counts time the probe or the server waited for a core. Results:
bench/results/<date>-documents.md.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pycrdt
import socketio

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import run as bench  # noqa: E402 - the benchmark's children and helpers

from rt.auth import TokenVerifier  # noqa: E402

INI = bench.APPLIANCE_INI.replace("[server]\n", "[server]\nmax_message_bytes = 134217728\n",
                                  1) + """

[documents]
max_document_bytes = 134217728
max_update_bytes = 67108864

[limits]
max_outbound_bytes = 268435456
"""
DOC = "note:bench"
PATH = "/ws/socket.io"
WAIT = 120.0
PROBE_INTERVAL = 0.012  # ~80 round trips a second: inside a session's inbound budget


def token(user: str) -> str:
    return TokenVerifier(bench.SECRET).issue(user, 3600, {})


async def client(url: str, user: str) -> socketio.AsyncClient:
    # aiohttp's client refuses websocket messages over 4 MiB unless told otherwise
    sio = socketio.AsyncClient(reconnection=False,
                               websocket_extra_options={"max_msg_size": 0})
    await sio.connect(url, socketio_path=PATH, transports=["websocket"],
                      auth={"token": token(user)}, wait_timeout=30)
    return sio


def edits(size: int) -> tuple[list[bytes], int]:
    """The updates of an editor writing about `size` bytes of text in scattered paragraphs
    (made before connecting: making them takes a while, and a client that blocks its loop
    misses its pings), and the bytes of the document's state at the end."""
    rnd = random.Random(size)
    doc = pycrdt.Doc(client_id=rnd.getrandbits(32))
    text = doc.get("t", type=pycrdt.Text)
    updates, written, batch = [], 0, 0
    sv = doc.get_state()
    while written < size:
        # a paragraph at a scattered place: the document ends up in many pieces, as an
        # edited note does (appending only would make one long string)
        chunk = rnd.randbytes(rnd.randint(200, 2000)).hex() + " "
        text.insert(rnd.randint(0, written), chunk)
        written += len(chunk)
        batch += len(chunk)
        if batch >= 256 * 1024 or written >= size:
            updates.append(doc.get_update(sv))
            sv = doc.get_state()
            batch = 0
    return updates, len(doc.get_update())


async def write_document(url: str, size: int) -> int:
    """An editor writes the document; returns the bytes of its state."""
    updates, state = await asyncio.to_thread(edits, size)
    editor = await client(url, "writer")
    assert await editor.call("ydoc:document:join", {"document_id": DOC}, timeout=WAIT) == {
        "ok": True}
    for update in updates:
        ack = await editor.call("ydoc:document:update", {"document_id": DOC, "update": update},
                                timeout=WAIT)
        assert ack == {"ok": True}, ack
    await editor.disconnect()
    return state


def loop_thread_cpu(pid: int) -> float:
    """Seconds of CPU the process's main thread (the appliance's event loop) has used."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


async def join_once(url: str, user: str, pid: int,
                    ) -> tuple[float, float, float, float, socketio.AsyncClient]:
    """(wall start, wall end, seconds, loop thread CPU seconds, the joined client)."""
    sio = await client(url, user)
    got: asyncio.Future = asyncio.get_running_loop().create_future()
    sio.on("ydoc:document:state", lambda data: got.done() or got.set_result(data))
    start_wall, start, cpu = time.time(), time.perf_counter(), loop_thread_cpu(pid)
    ack = await sio.call("ydoc:document:join", {"document_id": DOC}, timeout=WAIT)
    assert ack == {"ok": True}, ack
    state = await asyncio.wait_for(got, WAIT)
    seconds, cpu = time.perf_counter() - start, loop_thread_cpu(pid) - cpu
    assert len(bytes(state["state"])) > 0
    return start_wall, time.time(), seconds, cpu, sio


def probe_main(url: str, seconds: float, out: str) -> None:
    """The probing client (its own process): acked heartbeats, one at a time."""
    async def run() -> None:
        sio = await client(url, "probe")
        samples = []
        end = time.monotonic() + seconds
        while time.monotonic() < end and not Path(out + ".stop").exists():
            t0 = time.time()
            await sio.call("heartbeat", {}, timeout=WAIT)
            samples.append((t0, time.time() - t0))
            await asyncio.sleep(PROBE_INTERVAL)
        await sio.disconnect()
        Path(out).write_text(json.dumps(samples))
    asyncio.run(run())


def worst_rtt(samples: list, start: float, end: float) -> float:
    # a round trip that overlaps the window (widened by one probe interval, so that the
    # probe just before or after a short join counts) was held up by whatever it held
    start, end = start - PROBE_INTERVAL, end + PROBE_INTERVAL
    inside = [rtt for t0, rtt in samples if t0 + rtt >= start and t0 <= end]
    return max(inside) if inside else 0.0


async def measure(size_mb: float, joins: int, run_dir: Path) -> dict:
    size = int(size_mb * 1024 * 1024)
    (run_dir / "appliance.ini").write_text(INI)
    server = Server(run_dir, f"{size_mb}")
    server.start(timeout=60)
    readers = ["probe"] + [f"j{i}" for i in range(joins)]
    for user in ["writer"] + readers:
        bench.http_call(server.port, "PUT", f"/api/v1/users/{user}", {"name": user})
    bench.http_call(server.port, "PUT", "/api/v1/notes/bench", {"owner": "writer",
                                                                "read": readers})
    state_bytes = await write_document(server.url, size)
    server.stop()
    server.start(timeout=60)  # cold: the document is in the store only
    out = str(run_dir / f"probe-{size_mb}.json")
    probe = subprocess.Popen([sys.executable, __file__, "--probe", server.url, out],
                             cwd=bench.ROOT)
    await asyncio.sleep(1.0)
    results, clients = [], []
    try:
        await asyncio.sleep(0)
        for i in range(joins):
            start, end, seconds, cpu, sio = await join_once(server.url, f"j{i}",
                                                            server.proc.pid)
            clients.append(sio)
            results.append((start, end, seconds, cpu))
            await asyncio.sleep(0.5)
    except BaseException:
        bench.log(server.log_path.read_text()[-3000:])
        raise
    finally:
        Path(out + ".stop").write_text("")
        probe.wait(timeout=WAIT)
        for sio in clients:
            await sio.disconnect()
        server.stop()
    samples = json.loads(Path(out).read_text())
    quiet = sorted(rtt for _, rtt in samples)
    return {
        "size_mb": size_mb, "state_bytes": state_bytes,
        "joins": [{"seconds": s, "loop_cpu": cpu, "worst_rtt": worst_rtt(samples, a, b)}
                  for a, b, s, cpu in results],
        "probe_p50": quiet[len(quiet) // 2] if quiet else None,
    }


class Server(bench.Server):
    def __init__(self, run_dir: Path, tag: str):
        super().__init__("appliance", run_dir, tag)
        self.data = run_dir / f"data-{tag}"

    def command(self) -> list[str]:
        return [str(bench.VENV_PY), str(bench.ROOT / "appliance.py"), "serve", "--config",
                str(self.run_dir / "appliance.ini"), "--port", "0", "--data-dir",
                str(self.data)]


def render(rows: list[dict], elapsed: float) -> str:
    lines = [f"# Joining a large document ({dt.date.today().isoformat()})", "",
             "`python bench/documents.py` (bench/documents.py says what is measured). One "
             "appliance, SQLite; a probing client with acked round trips in its own process.",
             "", "| document (text written) | state | join | join time | longest round trip "
             "of another client during the join | event-loop thread CPU during the join |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        for i, j in enumerate(row["joins"]):
            kind = "cold (loaded from the store)" if i == 0 else "warm (document in memory)"
            lines.append(f"| {row['size_mb']} MB | {row['state_bytes'] / 1048576:.1f} MiB | "
                         f"{kind} | {j['seconds'] * 1000:.0f} ms | "
                         f"{j['worst_rtt'] * 1000:.1f} ms | {j['loop_cpu'] * 1000:.1f} ms |")
    probe = [r["probe_p50"] for r in rows if r["probe_p50"]]
    lines += ["", f"Probe round trip p50 over the runs: "
              f"{1000 * sorted(probe)[len(probe) // 2]:.2f} ms. Whole run {elapsed:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.5,2,8,32", help="document sizes in MB")
    ap.add_argument("--joins", type=int, default=3, help="joins per size (first one cold)")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results")
    ap.add_argument("--probe", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        probe_main(args.probe[0], 3600.0, args.probe[1])
        return 0
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rt-bench-docs-") as tmp:
        try:
            for size in (float(s) for s in args.sizes.split(",")):
                bench.log(f"document of {size} MB")
                rows.append(asyncio.run(measure(size, args.joins, Path(tmp))))
        finally:
            bench.end_all()
    bench.report(render(rows, time.monotonic() - started), "documents",
                 write=not args.no_write)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
