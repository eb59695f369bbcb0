"""Child processes of the end-to-end tier: started with their output in a log file, stopped
by their own PID, and waited for with a bound.

Every process gets its own session (so a signal reaches it and not the test) and dies with
the test process however that dies (PR_SET_PDEATHSIG, as tests/support/redis_servers.py
does): a CI timeout that kills pytest without teardown leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.support.redis_servers import _die_with_parent

STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL


class Process:
    """One child process whose stdout and stderr go to `log`."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict | None = None,
                 cwd: Path | None = None) -> None:
        self.name, self.args, self.log, self.env, self.cwd = name, args, log, env, cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True,
                preexec_fn=_die_with_parent)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log "
                               f"{self.log}:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal our own child by its PID, wait for it, SIGKILL it when it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=5)


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.1, process: Process | None = None) -> None:
    """Poll `check` until it is true; fail after `timeout` s, or at once when `process`
    died meanwhile (with its log)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None:
            process.check_alive()
        if check():
            return
        if time.monotonic() > deadline:
            tail = f"; log {process.log}:\n{process.log_tail()}" if process else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{tail}")
        time.sleep(interval)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def wait_http(url: str, timeout: float, process: Process | None = None,
              status: int = 200) -> None:
    wait_until(lambda: http_status(url) == status, timeout, f"{url} to answer {status}",
               interval=0.2, process=process)


def env_with(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without what would leak into a child's configuration
    (a developer's own open-webui or appliance settings), plus `extra`."""
    prefixes = ("RT_", "WEBUI_", "WEBSOCKET_", "REDIS_", "OPENAI_", "OLLAMA_", "ENABLE_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**base, **extra}
