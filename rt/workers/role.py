"""What a worker is told by its supervisor, through its environment.

The supervisor starts each worker as the same program with the same arguments (so the
worker reads the same configuration the same way) plus these variables; a process
without them is not a worker (one process, or the supervisor itself).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass

INDEX, COUNT, RUN_DIR, LISTEN_FDS, BROKER = (
    "RT_WORKER_INDEX", "RT_WORKER_COUNT", "RT_WORKER_RUN_DIR", "RT_WORKER_LISTEN_FDS",
    "RT_WORKER_BROKER")


@dataclass(frozen=True)
class WorkerRole:
    index: int
    count: int
    run_dir: str  # the supervisor's 0700 directory: the broker's and the workers' sockets
    listen_fds: tuple[int, ...]  # the listening sockets, inherited
    broker: str = ""  # the private broker's Unix socket (embedded state), else empty

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerRole | None:
        if INDEX not in env:
            return None
        return cls(index=int(env[INDEX]), count=int(env[COUNT]), run_dir=env[RUN_DIR],
                   listen_fds=tuple(int(fd) for fd in env[LISTEN_FDS].split(",") if fd),
                   broker=env.get(BROKER, ""))

    def env(self) -> dict[str, str]:
        return {INDEX: str(self.index), COUNT: str(self.count), RUN_DIR: self.run_dir,
                LISTEN_FDS: ",".join(map(str, self.listen_fds)), BROKER: self.broker}

    @property
    def name(self) -> str:
        return f"worker {self.index}"

    def sibling_socket(self, index: int) -> str:
        """Where worker `index` takes requests passed on by the others (HTTP)."""
        return os.path.join(self.run_dir, f"worker-{index}.sock")

    def handoff_socket(self, index: int) -> str:
        """Where worker `index` takes websockets handed over by the others."""
        return os.path.join(self.run_dir, f"worker-{index}.handoff")

    def listening_sockets(self) -> list[socket.socket]:
        return [socket.socket(fileno=fd) for fd in self.listen_fds]


def die_with_parent() -> None:
    """Be killed (SIGKILL) when the process that started this one dies, however it dies:
    a supervisor killed outright must leave no worker or broker behind. Linux only
    (PR_SET_PDEATHSIG); elsewhere nothing."""
    with contextlib.suppress(Exception):
        import ctypes  # noqa: PLC0415 - only the processes that ask need it

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
