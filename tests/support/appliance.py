"""A real appliance for tests: in-process on a free port, or as a child process.

In-process appliances run on the test's event loop (pytest-asyncio); clients are real
python-socketio clients over real sockets, the HTTP API is called over real HTTP.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import socketio
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from rt import config
from rt.app import Appliance
from rt.auth import TokenVerifier
from rt.backends import User

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-" + "x" * 64
API_KEY = "test-api-key-0123456789"
WAIT = 5.0  # seconds any single expected event may take


def settings_for(tmp_path: Path, ini: str = "", env: dict | None = None,
                 data_dir: Path | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "rt-appliance.ini"
    path.write_text(ini)
    environ = {"WEBUI_SECRET_KEY": SECRET, "RT_API_KEY": API_KEY, **(env or {})}
    return config.load_settings(str(path), environ, {
        ("server", "host"): "127.0.0.1", ("server", "port"): "0",
        ("state", "data_dir"): str(data_dir or tmp_path / "data")})


class Recorder:
    """Every event a python-socketio client receives, with bounded waits."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple]] = []
        self._changed = asyncio.Event()

    def add(self, event: str, *args: Any) -> None:
        self.events.append((event, args))
        self._changed.set()

    def of(self, event: str) -> list[Any]:
        return [args[0] if len(args) == 1 else args for ev, args in self.events if ev == event]

    async def wait_for(self, event: str, pred=None, timeout: float = WAIT) -> Any:
        async def scan():
            seen = 0
            while True:
                for item in self.of(event)[seen:]:
                    if pred is None or pred(item):
                        return item
                seen = len(self.of(event))
                self._changed.clear()
                await self._changed.wait()
        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {event!r} event within {timeout} s; got {[e for e, _ in self.events]}"
            ) from None


class Client(socketio.AsyncClient):
    def __init__(self, **kw: Any) -> None:
        super().__init__(reconnection=False, **kw)
        self.rec = Recorder()
        self.on("*", self.rec.add)


class Harness:
    def __init__(self, app: Appliance | None, url: str | None = None,
                 path: str = "/ws/socket.io"):
        """For an in-process `app`, or for any appliance at `url` (a child process)."""
        self.app = app
        self.url = url or f"http://127.0.0.1:{app.port}"
        self.path = app.settings.server.socketio_path if app else path
        self.http = AsyncHTTPClient(force_instance=True)
        self.clients: list[Client] = []
        self.verifier = TokenVerifier(SECRET)

    async def user(self, user_id: str, name: str | None = None, role: str = "user",
                   disabled: bool = False) -> str:
        """Register a user (through the store in-process, else the API); returns a token."""
        name = name or user_id.title()
        if self.app is not None:
            await self.app.backend.store.put_user(User(user_id, name, role, disabled))
        else:
            status, body = await self.api("PUT", f"/api/v1/users/{user_id}",
                                          {"name": name, "role": role, "disabled": disabled})
            assert status == 200, body
        return self.token(user_id)

    def token(self, user_id: str, expires: float | None = 3600, **extra: Any) -> str:
        return self.verifier.issue(user_id, expires, extra)

    async def api(self, method: str, path: str, body: Any = None, key: str | None = API_KEY,
                  raw: bytes | None = None, headers: dict | None = None) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        req = HTTPRequest(self.url + path, method=method, headers=hdrs, body=data,
                          allow_nonstandard_methods=True, request_timeout=WAIT * 3)
        resp = await self.http.fetch(req, raise_error=False)
        try:
            parsed = orjson.loads(resp.body) if resp.body else None
        except orjson.JSONDecodeError:
            parsed = resp.body
        return resp.code, parsed

    async def connect(self, token: str | None, transports=("websocket",), **kw: Any) -> Client:
        client = Client()
        self.clients.append(client)
        auth = {"token": token} if token is not None else None
        await client.connect(self.url, socketio_path=self.path, transports=list(transports),
                             auth=auth, wait_timeout=WAIT, **kw)
        return client

    async def refused(self, token: Any, transports=("websocket",)) -> str:
        """Connect expecting a refusal; returns the CONNECT_ERROR message."""
        client = Client()
        got: list[Any] = []
        client.on("connect_error", lambda data: got.append(data))
        with contextlib.suppress(socketio.exceptions.ConnectionError):
            await client.connect(self.url, socketio_path=self.path, transports=list(transports),
                                 auth={"token": token}, wait_timeout=WAIT)
        await client.disconnect()
        assert got, "connection was not refused"
        return got[0]["message"] if isinstance(got[0], dict) else got[0]

    async def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.disconnect()
        self.http.close()


@contextlib.asynccontextmanager
async def running(tmp_path: Path, ini: str = "", env: dict | None = None,
                  data_dir: Path | None = None):
    app = Appliance(settings_for(tmp_path, ini, env, data_dir))
    await app.start()
    harness = Harness(app)
    try:
        yield harness
    finally:
        await harness.close()
        await app.stop()


class ApplianceProcess:
    """`python appliance.py serve` as a child process, for restarts, signals and crashes."""

    def __init__(self, tmp_path: Path, ini: str = "", env: dict | None = None, port: int = 0):
        self.tmp_path = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.config = tmp_path / "rt-appliance.ini"
        if not self.config.exists() or ini:
            self.config.write_text(ini)
        self.env = {**os.environ, "WEBUI_SECRET_KEY": SECRET, "RT_API_KEY": API_KEY,
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        if "workers" not in ini and "RT_SERVER_WORKERS" not in self.env:
            # one process, the node these tests reason about (one appliance, one node of a
            # cluster, its pid); tests/integration/test_workers.py asks for workers itself,
            # and RT_SERVER_WORKERS in the environment runs every such test with workers
            self.env["RT_SERVER_WORKERS"] = "1"
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []
        self.log_path: Path | None = None

    def start(self, timeout: float = 20.0) -> int:
        # output goes to a file, not a pipe: nobody reads a pipe during a long test, and a
        # full pipe would block the appliance's logging
        self.log_path = self.tmp_path / f"appliance-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "appliance.py"), "serve", "--config", str(self.config),
             "--port", str(self.port), "--data-dir", str(self.tmp_path / "data")],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text()
            match = re.search(r"listening on http://[^:]+:(\d+)", text)
            if match:
                self.port = int(match.group(1))
                self.output = [text]
                return self.port
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"appliance did not start: {self.log_path.read_text()}")

    def rest_of_output(self, timeout: float = 10.0) -> str:
        self.proc.wait(timeout)
        self._log.close()
        self.output = [self.log_path.read_text()]
        return self.output[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        finally:
            self.rest_of_output()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc and not self._log.closed:
            self._log.close()
