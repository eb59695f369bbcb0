"""Real Redis topologies for tests: processes this module starts and kills itself.

- `redis_server`: one standalone redis-server (session scope);
- `redis_sentinel`: a master, one replica and three sentinels (session scope; a test that
  fails over leaves it healthy, with the roles swapped: ask `current_master()`);
- `redis_cluster`: three masters joined with `redis-cli --cluster create` (session scope).

Tests sharing a topology keep apart by key prefix (one per test), not by flushing.

Every process listens on 127.0.0.1 on a free port (never 6379: that Redis belongs to the
machine), keeps its files in a temporary directory, persists nothing, and is killed at
teardown. Every wait is bounded. Where redis-server or redis-cli is missing the fixtures
skip with the install hint, except under CI=true, where they fail: CI must have them.

Use them from a conftest with `from tests.support.redis_servers import redis_server  #
noqa: F401` (pytest registers fixtures imported into a conftest).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
START_TIMEOUT = 15.0  # seconds for a process to answer PING
TOPOLOGY_TIMEOUT = 30.0  # seconds for replication, sentinel discovery or cluster state
HINT = "redis-server and redis-cli not found: install them (apt-get install redis-server)"


def require_redis() -> tuple[str, str]:
    """Paths of redis-server and redis-cli; skip (locally) or fail (CI=true) without."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli:
        return server, cli
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {HINT}", pytrace=False)
    pytest.skip(HINT)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies, however it dies
    (a CI timeout kills pytest without teardown). Linux only; elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    """A port free now on 127.0.0.1 (the kernel's ephemeral range: never 6379)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    assert port != 6379
    return port


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}"
                       + (f" (last error: {last})" if last else ""))


@dataclass
class RedisProcess:
    """One redis-server (or sentinel) process with its config file in `dir`."""

    binary: str
    dir: Path
    port: int
    lines: list[str]
    sentinel: bool = False
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self, **kw) -> redis.Redis:
        # no retries: the waits here poll on their own
        return redis.Redis(HOST, self.port, socket_timeout=5, socket_connect_timeout=2,
                           retry=Retry(NoBackoff(), 0), **kw)

    def start(self) -> RedisProcess:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / ("sentinel.conf" if self.sentinel else "redis.conf")
        base = [f"port {self.port}", f"bind {HOST}", f"dir {self.dir}", "daemonize no",
                f"logfile {self.dir / 'redis.log'}", "protected-mode no"]
        if not self.sentinel:
            # no files; a replica syncs at once (the 5 s default delay slows failovers)
            base += ['save ""', "appendonly no", "repl-diskless-sync-delay 0"]
        conf.write_text("\n".join(base + self.lines) + "\n")
        args = [self.binary, str(conf)] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        try:
            wait_until(self._answers, START_TIMEOUT, f"redis on port {self.port}")
        except TimeoutError as exc:
            self.kill()
            raise RuntimeError(f"{exc}; log:\n{self.log_tail()}") from None
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis on port {self.port} exited with {self.proc.returncode}:"
                               f"\n{self.log_tail()}")
        with contextlib.closing(self.client()) as c:
            try:
                return bool(c.ping())
            except (redis.ResponseError, redis.AuthenticationError):  # requirepass: it answers
                return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.dir / "redis.log").read_text(errors="replace")
        except OSError:
            text = ""
        proc = self.proc
        if proc is not None and proc.stderr is not None and proc.poll() is not None:
            with contextlib.suppress(ValueError, OSError):  # already closed
                text += proc.stderr.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL by default: a crash) and reap it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> RedisProcess:
        """Kill and start again on the same port with the same files (data is lost:
        nothing is persisted)."""
        self.kill()
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Topology:
    """Processes of one fixture; `stop()` kills every one of them."""

    root: Path
    processes: list[RedisProcess] = field(default_factory=list)

    def add(self, p: RedisProcess) -> RedisProcess:
        self.processes.append(p)
        return p

    def stop(self) -> None:
        for p in self.processes:
            p.kill()


@dataclass
class Standalone(Topology):
    server: RedisProcess | None = None

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class SentinelSet(Topology):
    master_name: str = "mymaster"
    master: RedisProcess | None = None
    replica: RedisProcess | None = None
    sentinels: list[RedisProcess] = field(default_factory=list)

    @property
    def sentinel_hosts(self) -> tuple[str, ...]:
        return tuple(s.address for s in self.sentinels)

    @property
    def url(self) -> str:
        """What rt's settings take: the master name as the URL's host."""
        return f"redis://{self.master_name}/0"

    def master_address(self) -> tuple[str, int]:
        with contextlib.closing(self.sentinels[0].client()) as c:
            host, port = c.execute_command("SENTINEL", "get-master-addr-by-name",
                                           self.master_name)
        return host.decode(), int(port)

    def current_master(self) -> RedisProcess:
        _, port = self.master_address()
        return next(p for p in (self.master, self.replica) if p.port == port)

    def current_replica(self) -> RedisProcess:
        _, port = self.master_address()
        return next(p for p in (self.master, self.replica) if p.port != port)

    def failover(self, timeout: float = TOPOLOGY_TIMEOUT, repoint: bool = True) -> RedisProcess:
        """Ask Sentinel to fail over; returns the new master once every sentinel names it
        and it accepts writes.

        After a forced failover the old master, still running, stays a master without
        replicas until Sentinel notices and re-points it (8-10 s later); clients still
        connected to it keep writing there meanwhile. `repoint` does at once what Sentinel
        does then (REPLICAOF the new master, then CLIENT KILL of normal and pub/sub
        clients so that they reconnect through Sentinel), which keeps the tests short."""
        old = self.current_master()
        with contextlib.closing(self.sentinels[0].client()) as c:
            c.execute_command("SENTINEL", "FAILOVER", self.master_name)
        new = self.replica if old is self.master else self.master

        def switched() -> bool:
            for s in self.sentinels:
                with contextlib.closing(s.client()) as c:
                    _, port = c.execute_command("SENTINEL", "get-master-addr-by-name",
                                                self.master_name)
                if int(port) != new.port:
                    return False
            with contextlib.closing(new.client()) as c:
                return c.info("replication")["role"] == "master"

        wait_until(switched, timeout, "the sentinel failover", interval=0.1)
        if repoint:
            with contextlib.closing(old.client()) as c:
                c.replicaof(HOST, new.port)
                c.client_kill_filter(_type="normal", skipme=True)
                c.client_kill_filter(_type="pubsub")
        return new

    def wait_healthy(self, timeout: float = TOPOLOGY_TIMEOUT) -> None:
        """Master and replica linked, every sentinel knows both and the other sentinels."""
        def healthy() -> bool:
            master, replica = self.current_master(), self.current_replica()
            with contextlib.closing(replica.client()) as c:
                info = c.info("replication")
                if info.get("master_link_status") != "up" or info.get("master_port") != master.port:
                    return False
            for s in self.sentinels:
                with contextlib.closing(s.client()) as c:
                    m = c.sentinel_master(self.master_name)
                    if (m["port"] != master.port or m["num-slaves"] < 1
                            or m["num-other-sentinels"] < len(self.sentinels) - 1):
                        return False
                    if any(r.get("is_disconnected") or r["flags"] != "slave"
                           for r in c.sentinel_slaves(self.master_name)
                           if r["port"] == replica.port):
                        return False
            return True

        wait_until(healthy, timeout, "a healthy sentinel set", interval=0.1)


@dataclass
class Cluster(Topology):
    nodes: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def wait_ok(self, timeout: float = TOPOLOGY_TIMEOUT) -> None:
        def ok() -> bool:
            for n in self.nodes:
                with contextlib.closing(n.client()) as c:
                    info = c.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                        return False
                    if f"cluster_known_nodes:{len(self.nodes)}" not in info:
                        return False
            return True

        wait_until(ok, timeout, "cluster_state:ok on every node", interval=0.1)


# --- builders (also usable outside fixtures) --------------------------------------------------

def start_standalone(root: Path, extra: list[str] | None = None) -> Standalone:
    server_bin, _ = require_redis()
    topo = Standalone(root)
    try:
        topo.server = topo.add(RedisProcess(server_bin, root / "redis", free_port(),
                                            list(extra or []))).start()
    except BaseException:
        topo.stop()
        raise
    return topo


def start_sentinel_set(root: Path, master_name: str = "mymaster") -> SentinelSet:
    server_bin, _ = require_redis()
    topo = SentinelSet(root, master_name=master_name)
    try:
        topo.master = topo.add(RedisProcess(server_bin, root / "master", free_port(), [])).start()
        topo.replica = topo.add(RedisProcess(
            server_bin, root / "replica", free_port(),
            [f"replicaof {HOST} {topo.master.port}"])).start()
        for i in range(3):
            topo.sentinels.append(topo.add(RedisProcess(
                server_bin, root / f"sentinel{i}", free_port(),
                [f"sentinel monitor {master_name} {HOST} {topo.master.port} 2",
                 f"sentinel down-after-milliseconds {master_name} 1000",
                 f"sentinel failover-timeout {master_name} 5000",
                 f"sentinel parallel-syncs {master_name} 1"],
                sentinel=True)).start())
        topo.wait_healthy()
    except BaseException:
        topo.stop()
        raise
    return topo


def start_cluster(root: Path, masters: int = 3) -> Cluster:
    server_bin, cli = require_redis()
    topo = Cluster(root)
    try:
        for i in range(masters):
            topo.nodes.append(topo.add(RedisProcess(
                server_bin, root / f"node{i}", free_port(),
                ["cluster-enabled yes", "cluster-config-file nodes.conf",
                 "cluster-node-timeout 2000", f"cluster-port {free_port()}",
                 "cluster-require-full-coverage yes"])).start())
        subprocess.run(
            [cli, "--cluster", "create", *(n.address for n in topo.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=TOPOLOGY_TIMEOUT)
        topo.wait_ok()
    except BaseException:
        topo.stop()
        raise
    return topo


@contextlib.contextmanager
def _tmp(name: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"rt-{name}-") as d:
        yield Path(d)


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_server() -> Iterator[Standalone]:
    require_redis()
    with _tmp("redis") as root:
        topo = start_standalone(root)
        try:
            yield topo
        finally:
            topo.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelSet]:
    require_redis()
    with _tmp("sentinel") as root:
        topo = start_sentinel_set(root)
        try:
            yield topo
        finally:
            topo.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    require_redis()
    with _tmp("cluster") as root:
        topo = start_cluster(root)
        try:
            yield topo
        finally:
            topo.stop()
