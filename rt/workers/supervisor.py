"""The process systemd starts when `[server] workers` is above one: it serves no client.

It binds the listening sockets (a set per worker on the one port, SO_REUSEPORT: the
kernel spreads new connections over the workers), starts the broker on embedded state, then
the workers: the same program with the same arguments, told their role through their
environment (role.py). Each worker's sd_notify messages come to the supervisor, not to
systemd (its NOTIFY_SOCKET is the supervisor's): the supervisor says READY=1 once every
worker is ready, forwards SIGHUP and says READY=1 again once every worker has reloaded,
and on SIGTERM stops accepting, lets every worker drain and stops the broker last.

A worker that exits, or stops pinging its watchdog (a hung event loop), is restarted
under the same index; its sessions' clients reconnect to the others, and the cluster
sweep of the Redis backend tells everyone they left. Workers die with the supervisor
(PR_SET_PDEATHSIG), so a SIGKILL of the main process leaves nothing running.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import tornado.netutil

from .. import sdnotify
from .broker import Broker, BrokerError, find_program
from .role import WorkerRole, die_with_parent

log = logging.getLogger("rt.app")

EMBEDDED = ("", "sqlite")
# a worker's event loop that does not ping for this long is hung: it is killed and
# restarted (systemd's own WatchdogSec, when set, is passed on instead)
WORKER_WATCHDOG = 30.0
RESTART_DELAY = 1.0  # between a worker's death and its restart, doubled while it keeps dying
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that ran this long starts over at RESTART_DELAY
POLL = 0.2
NOTIFY = "notify.sock"


class StartFailed(Exception):
    """A worker ended before the appliance was ready."""


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    reloaded: bool = True
    started: float = 0.0
    last_ping: float = 0.0
    restart_at: float | None = None
    delay: float = RESTART_DELAY
    restarts: int = 0
    status: str = ""
    exits: list[int] = field(default_factory=list)


def worker_command() -> list[str]:
    """This very program again, with the arguments it was given."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *sys.argv[1:]]
    return [sys.executable, "-c", "import sys; from rt.cli import main; sys.exit(main())",
            *sys.argv[1:]]


class Supervisor:
    def __init__(self, settings: Any, count: int,
                 announce: Any = lambda message: print(message, flush=True)) -> None:
        self.settings = settings
        self.count = count
        self.announce = announce
        self.workers = [Worker(i) for i in range(count)]
        self.sockets: list[list[socket.socket]] = []  # by worker index
        self.broker: Broker | None = None
        self.run_dir = ""
        self.port = 0
        self.stopping = False
        self.reloading = False
        self.announced = False
        self.watchdog = sdnotify.watchdog_interval()  # systemd's, for this process
        self.worker_watchdog = self.watchdog or WORKER_WATCHDOG
        self._notify: socket.socket | None = None
        self._by_pid: dict[int, Worker] = {}

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        s = self.settings
        # a private directory for the sockets: no other user can reach a worker or the
        # broker (systemd's RuntimeDirectory= when the unit has one)
        self.run_dir = tempfile.mkdtemp(prefix="rt-appliance-",
                                        dir=os.environ.get("RUNTIME_DIRECTORY") or None)
        os.chmod(self.run_dir, 0o700)
        # one set of listening sockets per worker on the same port (SO_REUSEPORT): the
        # kernel spreads new connections evenly by their addresses, where one shared
        # socket would give most of them to whichever worker happens to wake first. The
        # supervisor keeps every set open, so that a restarting worker's share waits in
        # its backlog instead of being refused.
        port = s.server.port
        for _ in self.workers:
            sockets = tornado.netutil.bind_sockets(port, s.server.host,
                                                   family=socket.AF_UNSPEC, reuse_port=True)
            port = sockets[0].getsockname()[1]  # `port = 0`: the one the first set got
            for sock in sockets:
                os.set_inheritable(sock.fileno(), True)
            self.sockets.append(sockets)
        self.port = port
        if s.state.manager in EMBEDDED:
            self.broker = Broker(find_program(s.server.worker_broker), self.run_dir,
                                 s.state.data_dir)
            self.broker.start()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(os.path.join(self.run_dir, NOTIFY))
        notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # who sent each message
        notify.setblocking(False)
        self._notify = notify
        for worker in self.workers:
            self._spawn(worker)

    def _role(self, index: int) -> WorkerRole:
        return WorkerRole(index=index, count=self.count, run_dir=self.run_dir,
                          listen_fds=tuple(sock.fileno() for sock in self.sockets[index]),
                          broker=self.broker.socket if self.broker is not None else "")

    def _spawn(self, worker: Worker) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "LISTEN_PID")}
        env.update(self._role(worker.index).env())
        env["NOTIFY_SOCKET"] = os.path.join(self.run_dir, NOTIFY)
        env["WATCHDOG_USEC"] = str(int(self.worker_watchdog * 1e6))
        if not getattr(sys, "frozen", False):
            package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        worker.proc = subprocess.Popen(
            worker_command(), env=env, stdin=subprocess.DEVNULL,
            pass_fds=[sock.fileno() for sock in self.sockets[worker.index]],
            preexec_fn=die_with_parent)
        worker.ready, worker.reloaded, worker.restart_at = False, True, None
        worker.started = worker.last_ping = time.monotonic()
        self._by_pid[worker.proc.pid] = worker

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        try:
            return await self._run()
        except StartFailed as exc:
            print(f"cannot start: {exc}", file=sys.stderr, flush=True)
            return 1

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        assert self._notify is not None
        loop.add_reader(self._notify.fileno(), self._on_notify)
        while not stop.is_set():
            self._look_after()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL)
        return await self._stop()

    def _look_after(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            proc = worker.proc
            if proc is not None and proc.poll() is not None and not self.announced:
                # a worker that cannot start (the store, the port, the configuration)
                # will not start by trying again: the start fails, as with one process
                raise StartFailed(f"worker {worker.index} exited with {proc.returncode} "
                                  "before every worker was ready")
            if proc is not None and proc.poll() is not None:
                self._by_pid.pop(proc.pid, None)
                worker.exits.append(proc.returncode)
                ran = now - worker.started
                worker.delay = RESTART_DELAY if ran > STABLE_AFTER else min(
                    worker.delay * 2, RESTART_DELAY_MAX) if worker.restarts else RESTART_DELAY
                log.error("worker %d exited with %s after %.0f s; restarting in %.0f s",
                          worker.index, proc.returncode, ran, worker.delay)
                worker.proc, worker.ready, worker.restart_at = None, False, now + worker.delay
            elif proc is not None and now - worker.last_ping > self.worker_watchdog:
                log.error("worker %d did not ping its watchdog for %.0f s: killing it",
                          worker.index, now - worker.last_ping)
                proc.kill()
                worker.last_ping = now  # reaped at the next look
            if worker.proc is None and worker.restart_at is not None and now >= worker.restart_at:
                worker.restarts += 1
                self._spawn(worker)
        if self.watchdog and all(w.proc is not None and now - w.last_ping < self.watchdog
                                 for w in self.workers):
            sdnotify.watchdog()

    def _on_notify(self) -> None:
        assert self._notify is not None
        while True:
            try:
                data, ancillary, _flags, _addr = self._notify.recvmsg(
                    4096, socket.CMSG_SPACE(struct.calcsize("3i")))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:struct.calcsize("3i")])[0]
            worker = self._worker_of(pid) if pid is not None else None
            if worker is not None:
                self._on_message(worker, data.decode("utf-8", "replace"))

    def _worker_of(self, pid: int) -> Worker | None:
        # the one-file binary runs each worker as two processes (its bootloader, which the
        # supervisor started, and the Python child that sends): the sender's parent counts
        worker = self._by_pid.get(pid)
        if worker is None:
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("PPid:"):
                        worker = self._by_pid.get(int(line.split()[1]))
                        break
        return worker

    def _on_message(self, worker: Worker, text: str) -> None:
        fields = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
        worker.last_ping = time.monotonic()
        if "STATUS" in fields:
            worker.status = fields["STATUS"]
        if fields.get("READY") == "1":
            worker.ready = worker.reloaded = True
        if fields.get("RELOADING") == "1":
            worker.reloaded = False
        if not self.announced and all(w.ready for w in self.workers):
            self.announced = True
            self._announce_ready()
        elif self.reloading and all(w.reloaded for w in self.workers):
            self.reloading = False
            sdnotify.ready(self._status())
            log.info("every worker has reloaded its configuration")

    def _status(self) -> str:
        return f"listening on {self.settings.server.host}:{self.port}, {self.count} workers"

    def _announce_ready(self) -> None:
        s = self.settings
        # (the workers' own lines name the SQLite file, as a single process does)
        state = f"sqlite in {s.state.data_dir}" if self.broker is not None else "redis"
        self.announce(f"rt-appliance listening on http://{s.server.host}:{self.port}"
                      f"{s.server.socketio_path} ({state}; {self.count} workers)")
        sdnotify.ready(self._status())

    def _reload(self) -> None:
        sdnotify.reloading("reloading configuration in every worker")
        self.reloading = True
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.reloaded = False
                worker.proc.send_signal(signal.SIGHUP)

    # ------------------------------------------------------------------ stop
    async def _stop(self) -> int:
        self.stopping = True
        self.announce("stopping")
        sdnotify.stopping(f"draining {self.count} workers")
        # no new connection waits in a backlog nobody will accept from: the workers
        # close their copies as their drain starts, this is the last one
        for sockets in self.sockets:
            for sock in sockets:
                sock.close()
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.server.shutdown_timeout + 5.0
        for proc in running:
            try:
                await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time: killed", proc.pid)
                proc.kill()
                proc.wait()
        assert self._notify is not None
        asyncio.get_running_loop().remove_reader(self._notify.fileno())
        self.close()
        failed = [proc.returncode for proc in running if proc.returncode not in (0, None)]
        return 1 if failed else 0

    def close(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        for sockets in self.sockets:
            for sock in sockets:
                sock.close()
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
        if self.broker is not None:
            self.broker.stop()
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def workers_to_run(settings: Any, count: int) -> int:
    """`count` workers, unless `auto` asked for them on embedded state and there is no
    broker program here (a platform the shipped one is not built for): then one process,
    saying why. Asked for by number, a missing broker fails the start instead."""
    if count <= 1 or settings.server.workers or settings.state.manager not in EMBEDDED:
        return count
    try:
        find_program(settings.server.worker_broker)
    except BrokerError as exc:
        log.warning("workers = auto: running one process, not %d: %s", count, exc)
        return 1
    return count


def serve(settings: Any, count: int) -> int:
    """Run `count` workers until SIGTERM; the process's exit code."""
    supervisor = Supervisor(settings, count)
    try:
        supervisor.start()
    except (BrokerError, OSError) as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        supervisor.close()
        return 1
    try:
        return asyncio.run(supervisor.run())
    finally:
        supervisor.close()
