"""Smoke test of the built binary: the real file, real sockets, a real Socket.IO client.

    python packaging/smoke.py [dist/rt-appliance] [--require-notify] [--root ROOTFS]
        [--slow FACTOR]

Runs `version`, `check-config` (a good and a bad file), `token`, then `serve` on a free
port with a temporary data directory and `NOTIFY_SOCKET` pointing at an abstract datagram
socket of this script; a python-socketio client (websocket, and one over long-polling)
connects with the token, receives an emit sent through `POST /api/v1/emit` with the API
key read from the data dir; the websocket client joins a note's Yjs document, sends a Yjs
update, gets it acknowledged, and `GET /api/v1/documents/...` returns the stored state
with the text in it. It runs with `[server] workers = 2`: the Python child is the
supervisor, with two workers (each again a bootloader and its Python child) and the broker
the binary carries (valkey-server); the clients' sessions must reach both workers, and the
emit and the document must reach them all. SIGTERM to the one-file bootloader alone (as
systemd's KillMode=mixed sends it) must end everything with exit 0 (every process the
appliance started included) and leave no extracted _MEI directory behind.

--root ROOTFS runs the binary inside another root file system (packaging/in-root.sh: a
chroot with its own /proc, same process and network namespaces), e.g. the old-glibc build
root, or an arm64 one under qemu-user emulation; the binary and the temporary directory
are put inside that root. --slow multiplies every timeout (emulation).

Needs only the client side: python-socketio, websocket-client, requests (build.sh makes
build/smoke-venv; the test suite runs it with the project venv). Exit 0 = all good.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import socketio

WAIT = 10.0  # seconds for any single expected thing
START_TIMEOUT = 60.0  # the first start of a one-file binary unpacks it
IN_ROOT = Path(__file__).resolve().parent / "in-root.sh"
# A Yjs update made with pycrdt (client id 123456789): text root "t" gets
# "smoke test note" inserted. Fixed bytes, so the smoke client needs no Yjs library.
YJS_UPDATE = bytes.fromhex("0101959aef3a00040101740f736d6f6b652074657374206e6f746500")
YJS_TEXT = b"smoke test note"
WORKERS = 2


class Target:
    """Where the binary runs: here, or inside a root file system (paths seen from inside)."""

    def __init__(self, binary: str, root: str | None, slow: float) -> None:
        self.binary, self.root, self.slow = binary, root, slow

    def tmpdir(self) -> tempfile.TemporaryDirectory:
        base = os.path.join(self.root, "tmp") if self.root else None
        return tempfile.TemporaryDirectory(prefix="rt-smoke-", dir=base)

    def inner(self, path: Path) -> str:
        """A host path as the binary sees it."""
        if not self.root:
            return str(path)
        return "/" + str(path.relative_to(self.root))

    def command(self, tmp: Path, *args: str) -> list[str]:
        if not self.root:
            return [self.binary, *args]
        copy = tmp / "rt-appliance"
        if not copy.exists():
            shutil.copy2(self.binary, copy)
        return ["bash", str(IN_ROOT), self.root, self.inner(copy), *args]


class SmokeError(AssertionError):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SmokeError(what)
    print(f"ok   {what}", flush=True)


def child_env(tmp: str) -> dict[str, str]:
    """The caller's environment without anything that would configure the appliance."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RT_", "WEBSOCKET_", "WEBUI_", "REDIS_", "CORS_", "ENABLE_WEBSOCKET"))
           and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")}
    env["TMPDIR"] = tmp  # where the one-file bootloader unpacks itself
    return env


def run(command: list[str], env: dict, timeout: float = START_TIMEOUT):
    started = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - started


def http(method: str, url: str, body=None, key: str | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # the command name in parentheses may contain spaces: split after it
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def sid_worker(sio: socketio.Client) -> int:
    return int(sio.eio.sid.split(".", 1)[0])


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class NotifyListener:
    """An abstract-namespace datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.name = f"rt-smoke-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return "@" + self.name

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def has(self, line: str) -> bool:
        return any(line in m.splitlines() for m in self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Server:
    """`BINARY serve` as a child process; its merged output is read by a thread."""

    def __init__(self, command: list[str], env: dict) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put("")

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            match = re.search(pattern, line)
            if match:
                return match
            if line == "" and self.proc.poll() is not None:
                break
        raise SmokeError(f"no line matching {pattern!r}; output:\n{''.join(self.output)}")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: bootloader + child
        except ProcessLookupError:
            pass
        self.proc.wait(5)


def client(url: str, path: str, token: str, transport: str):
    sio = socketio.Client(reconnection=False)
    got: queue.Queue = queue.Queue()
    gone = threading.Event()
    # a trailing argument after the data, if any, is the connection-state-recovery offset
    sio.on("events", lambda data, *offset: got.put(data))
    sio.on("disconnect", lambda *a: gone.set())
    sio.connect(url, socketio_path=path, transports=[transport], auth={"token": token},
                wait_timeout=WAIT)
    return sio, got, gone


def smoke(target: Target, require_notify: bool) -> dict:
    global WAIT, START_TIMEOUT
    WAIT, START_TIMEOUT = WAIT * target.slow, START_TIMEOUT * target.slow
    timings: dict = {}
    with target.tmpdir() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "tmp").mkdir()
        data = tmp / "data"
        ini = tmp / "rt-appliance.ini"
        ini.write_text(f"[server]\nhost = 127.0.0.1\nport = 0\nshutdown_timeout = 10\n"
                       f"workers = {WORKERS}\n\n[state]\ndata_dir = {target.inner(data)}\n")
        env = child_env(target.inner(tmp / "tmp"))

        def cmd(*args: str) -> list[str]:
            return target.command(tmp, *args)

        proc, timings["version_s"] = run(cmd("version"), env=env)
        check(proc.returncode == 0 and re.match(r"rt-appliance \d+\.\d+", proc.stdout) is not None,
              f"version: {proc.stdout.strip()!r} in {timings['version_s']:.2f} s")

        proc, _ = run(cmd("check-config", "--config", target.inner(ini)), env=env)
        check(proc.returncode == 0 and "configuration ok" in proc.stdout,
              f"check-config of a good file: exit {proc.returncode}")
        bad = tmp / "bad.ini"
        bad.write_text("[server]\nport = abc\n")
        proc, _ = run(cmd("check-config", "--config", target.inner(bad)), env=env)
        check(proc.returncode == 78 and "port" in proc.stderr,
              f"check-config of a bad file: exit {proc.returncode} ({proc.stderr.strip()!r})")

        proc, _ = run(cmd("token", "--config", target.inner(ini), "--user", "smoke",
                          "--name", "Smoke", "--expires", "10m"), env=env)
        token = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        check(proc.returncode == 0 and token.count(".") == 2,
              f"token: exit {proc.returncode}, a JWT ({proc.stderr.strip()!r})")
        api_key_file = data / "api_key"
        check(api_key_file.exists() and api_key_file.stat().st_mode & 0o777 == 0o600,
              "api_key generated in the data dir with mode 0600")
        api_key = api_key_file.read_text().strip()

        notify = NotifyListener()
        server = Server(cmd("serve", "--config", target.inner(ini)),
                        {**env, "NOTIFY_SOCKET": notify.address})
        clients = []
        try:
            match = server.wait_for(r"listening on (http://[\d.]+:(\d+))(\S*)", START_TIMEOUT)
            timings["listening_s"] = time.monotonic() - server.started
            url, path = match.group(1), match.group(3) or "/ws/socket.io"
            check(True, f"serve: listening on {url}{path} after {timings['listening_s']:.2f} s")
            python_child = children_of(server.proc.pid)
            check(len(python_child) == 1, f"one-file bootloader {server.proc.pid} runs its "
                                          f"Python child {python_child}")
            check(f"({WORKERS} workers)" in match.group(0) or f"; {WORKERS} workers)" in
                  "".join(server.output), f"{WORKERS} workers ready")
            started = descendants(server.proc.pid)
            brokers = [pid for pid in started if "valkey-server" in cmdline(pid)]
            check(len(brokers) == 1 and "_MEI" in cmdline(brokers[0]),
                  f"the broker the binary carries runs: {[cmdline(p) for p in brokers]}")

            status, _ = http("GET", url + "/healthz")
            check(status == 200, f"GET /healthz: {status}")

            for transport in ("websocket", "polling"):
                clients.append(client(url, path, token, transport))
            check(True, "python-socketio clients connected (websocket, polling)")
            # more websocket clients until both workers hold one (a sid names its worker)
            owners = {sid_worker(c[0]) for c in clients}
            while owners != set(range(WORKERS)) and len(clients) < 40:
                clients.append(client(url, path, token, "websocket"))
                owners.add(sid_worker(clients[-1][0]))
            check(owners == set(range(WORKERS)),
                  f"sessions on every worker after {len(clients)} clients: {sorted(owners)}")

            status, body = http("POST", url + "/api/v1/emit", {"event": "events"}, key="wrong")
            check(status == 401, f"POST /api/v1/emit with a wrong key: {status}")
            payload = {"smoke": secrets.token_hex(4)}
            status, body = http("POST", url + "/api/v1/emit",
                                {"event": "events", "to": {"users": ["smoke"]}, "data": payload},
                                key=api_key)
            check(status == 202, f"POST /api/v1/emit: {status} {body[:200]!r}")
            for n, (sio_, got, _) in enumerate(clients):
                transport = "polling" if n == 1 else "websocket"
                try:
                    received = got.get(timeout=WAIT)
                except queue.Empty:
                    raise SmokeError(f"{transport} client received no 'events'") from None
                check(received == payload, f"{transport} client on worker "
                                           f"{sid_worker(sio_)} received the emit")

            # a Yjs update to a note's document, acknowledged only once stored
            for path_, body_ in (("/api/v1/users/smoke", {"name": "Smoke"}),
                                 ("/api/v1/notes/smoke1", {"owner": "smoke"})):
                status, body = http("PUT", url + path_, body_, key=api_key)
                check(status in (200, 201, 204), f"PUT {path_}: {status} {body[:200]!r}")
            sio = clients[0][0]
            ack = sio.call("ydoc:document:join", {"document_id": "note:smoke1"}, timeout=WAIT)
            check(ack == {"ok": True}, f"ydoc:document:join: {ack!r}")
            ack = sio.call("ydoc:document:update",
                           {"document_id": "note:smoke1", "update": list(YJS_UPDATE)},
                           timeout=WAIT)
            check(isinstance(ack, dict) and "error" not in ack,
                  f"ydoc:document:update acknowledged: {ack!r}")
            status, body = http("GET", url + "/api/v1/documents/note:smoke1", key=api_key)
            state = base64.b64decode(json.loads(body)["state_b64"]) if status == 200 else b""
            check(YJS_TEXT in state, f"GET /api/v1/documents/note:smoke1: {status}, "
                                     f"the update is in the stored state ({len(state)} bytes)")

            stop_started = time.monotonic()
            started = descendants(server.proc.pid)
            os.kill(server.proc.pid, signal.SIGTERM)  # like KillMode=mixed
            try:
                code = server.proc.wait(30 * target.slow)
            except subprocess.TimeoutExpired:
                raise SmokeError("no exit within 30 s of SIGTERM") from None
            timings["stop_s"] = time.monotonic() - stop_started
            check(code == 0, f"SIGTERM: exit {code} after {timings['stop_s']:.2f} s")
            for _, _, gone in clients:
                check(gone.wait(WAIT), "client was disconnected by the shutdown")
            left = [cmdline(pid) for pid in started if alive(pid)]
            check(not left, f"every process it started ({len(started)}) is gone too: {left}")
            leftovers = [p.name for p in (tmp / "tmp").iterdir()]
            check(not leftovers, f"nothing left in TMPDIR ({leftovers})")
        except BaseException:
            print("".join(server.output), file=sys.stderr)
            raise
        finally:
            for sio, _, _ in clients:
                try:
                    sio.disconnect()
                except Exception:
                    pass
            server.kill()
            time.sleep(0.3)  # last datagrams
            notify.close()

        timings["notify"] = notify.messages
        if require_notify:
            check(notify.has("READY=1"), "sd_notify READY=1 received")
            check(notify.has("STOPPING=1"), "sd_notify STOPPING=1 received")
        else:
            print(f"note sd_notify messages received: {notify.messages}")
    return timings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary", nargs="?", default="dist/rt-appliance")
    ap.add_argument("--require-notify", action="store_true",
                    help="fail unless READY=1 and STOPPING=1 reach NOTIFY_SOCKET")
    ap.add_argument("--root", help="run the binary inside this root file system (as root)")
    ap.add_argument("--slow", type=float, default=1.0, help="multiply every timeout")
    args = ap.parse_args(argv)
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        print(f"{binary}: not an executable file (build it with `make binary`)", file=sys.stderr)
        return 2
    try:
        timings = smoke(Target(binary, args.root and os.path.abspath(args.root), args.slow),
                        args.require_notify)
    except SmokeError as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    size = os.path.getsize(binary)
    where = f" inside {args.root}" if args.root else ""
    print(f"smoke test passed{where}: {size / 2**20:.1f} MiB, version {timings['version_s']:.2f} s, "
          f"listening after {timings['listening_s']:.2f} s, stop {timings['stop_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
