"""The deployment under test, in one of two modes, every process on a free port:

- "alone":     redis-server, the OpenAI stand-in, open-webui, nginx sending everything
               (/ws/socket.io included) to open-webui: what working looks like;
- "appliance": the same plus two rt-appliance nodes on the same Redis, and nginx sending
               /ws/socket.io to them: the deployment the README recommends.

Each mode gets a fresh open-webui (its first sign-up becomes the admin). Logs of every
process stay in the deployment's directory; `logs()` names them for failure reports.
"""
from __future__ import annotations

import contextlib
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.e2e import nginx, openwebui
from tests.e2e.processes import Process, env_with, wait_http
from tests.support.redis_servers import Standalone, free_port, start_standalone

ROOT = Path(__file__).resolve().parents[2]
MODES = ("alone", "appliance")
APPLIANCE_NODES = 2
START_TIMEOUT = 30.0


@dataclass
class Account:
    key: str  # "admin" or "user": how flows name it
    name: str
    email: str
    password: str
    id: str = ""
    role: str = ""
    token: str = ""  # the token of the saved browser profile
    storage_state: dict | None = None  # that profile: cookies and localStorage


@dataclass
class Deployment:
    mode: str
    root: Path
    secret: str
    url: str = ""  # nginx: what the browser opens
    openwebui_url: str = ""
    standin_url: str = ""
    appliance_urls: list[str] = field(default_factory=list)
    redis: Standalone | None = None
    processes: list[Process] = field(default_factory=list)
    # filled in by the sign-up flow (flows/accounts.py), shared by every later flow
    accounts: dict[str, Account] = field(default_factory=dict)

    @property
    def api(self) -> openwebui.Api:
        return openwebui.Api(self.openwebui_url)

    def standin_requests(self) -> list[dict]:
        """What open-webui asked the OpenAI stand-in so far."""
        resp = requests.get(self.standin_url.removesuffix("/v1") + "/standin/requests",
                            timeout=10)
        resp.raise_for_status()
        return resp.json()

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def logs(self) -> dict[str, Path]:
        found = {p.name: p.log for p in self.processes}
        if self.redis is not None:
            found["redis"] = self.redis.server.dir / "redis.log"
        found["nginx-error"] = self.root / "nginx" / "error.log"
        return found

    def log_tails(self, lines: int = 60) -> str:
        parts = []
        for name, path in self.logs().items():
            try:
                text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            except OSError:
                continue
            parts.append(f"----- {name} ({path}) -----\n{text}")
        return "\n".join(parts)

    def stop(self) -> None:
        # front to back: nothing new arrives while the rest stops
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop()
        if self.redis is not None:
            self.redis.stop()


def start_standin(log: Path) -> tuple[Process, str]:
    port = free_port()
    proc = Process("openai-standin", [sys.executable, "-m", "tests.e2e.openai_standin",
                                      "--port", str(port)], log, cwd=ROOT,
                   env=env_with({})).start()
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/v1/models", START_TIMEOUT, proc)
    return proc, url + "/v1"


def appliance_env(dep: Deployment, data_dir: Path) -> dict:
    return env_with({
        "WEBSOCKET_MANAGER": "redis",
        "WEBSOCKET_REDIS_URL": dep.redis.url,
        "WEBUI_SECRET_KEY": dep.secret,
        "RT_API_KEY": secrets.token_hex(16),
        "RT_DATA_DIR": str(data_dir),
        "OPENWEBUI_URL": dep.openwebui_url,
        "RT_SERVER_TRUST_PROXY_HEADERS": "true",
        "RT_LOG_LEVEL": "info",
    })


def start_appliance(dep: Deployment, index: int) -> Process:
    port = free_port()
    data = dep.root / f"appliance{index}"
    data.mkdir(parents=True, exist_ok=True)
    proc = Process(f"appliance{index}", [sys.executable, str(ROOT / "appliance.py"), "serve",
                                         "--host", "127.0.0.1", "--port", str(port)],
                   dep.root / "logs" / f"appliance{index}.log", cwd=ROOT,
                   env=appliance_env(dep, data)).start()
    dep.processes.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/readyz", START_TIMEOUT, proc)
    dep.appliance_urls.append(url)
    return proc


def start_deployment(mode: str, root: Path, venv: Path) -> Deployment:
    """Start everything of `mode`; on any failure stop what was started and re-raise."""
    assert mode in MODES
    logs = root / "logs"
    dep = Deployment(mode, root, secret=secrets.token_hex(32))
    try:
        dep.redis = start_standalone(root / "redis")
        standin, dep.standin_url = start_standin(logs / "openai-standin.log")
        dep.processes.append(standin)
        port = free_port()
        data = root / "open-webui"
        data.mkdir(parents=True, exist_ok=True)
        env = openwebui.environment(data, dep.secret, dep.redis.url, dep.standin_url)
        dep.processes.append(openwebui.start_openwebui(venv, port, env, logs / "open-webui.log"))
        dep.openwebui_url = f"http://127.0.0.1:{port}"
        owui_addr = f"127.0.0.1:{port}"
        if mode == "appliance":
            for i in range(APPLIANCE_NODES):
                start_appliance(dep, i + 1)
            socket_servers = [u.removeprefix("http://") for u in dep.appliance_urls]
        else:
            socket_servers = [owui_addr]
        listen = free_port()
        dep.processes.append(nginx.start_nginx(root / "nginx", listen, owui_addr,
                                               socket_servers, logs / "nginx.log"))
        dep.url = f"http://127.0.0.1:{listen}"
    except BaseException:
        dep.stop()
        raise
    return dep
