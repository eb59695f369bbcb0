"""Unmodified open-webui for the end-to-end tier: its environment, its start, and the few
calls of its HTTP API the flows make for set-up and checks (never for what the browser is
being tested on).

The virtual environment comes from install_openwebui.sh (cached between runs).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import requests

from tests.e2e.processes import Process, env_with, wait_http

HERE = Path(__file__).resolve().parent
INSTALL_SCRIPT = HERE / "install_openwebui.sh"
START_TIMEOUT = 90.0  # first start migrates a fresh database; ~10 s on 2 cores
HTTP_TIMEOUT = 15.0
# what open-webui's log shows when something tries to reach a host on the internet (its
# start banner names github.com: that line is no attempt)
INTERNET_MARKERS = ("huggingface.co", "pypi.org", "api.openai.com", "ollama.com",
                    "HTTPSConnectionPool", "Max retries exceeded",
                    "Failed to establish a new connection", "Cannot connect to host",
                    "Temporary failure in name resolution", "Name or service not known")


def installed_venv() -> Path | None:
    """The cached venv when install_openwebui.sh has finished one, without installing."""
    version = os.environ.get("OPENWEBUI_VERSION", "0.12.4")
    cache = Path(os.environ.get("RT_E2E_CACHE")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "rt-appliance" / "e2e")
    venv = cache / f"open-webui-{version}"
    return venv if (venv / ".installed").exists() else None


def install() -> Path:
    """Run the (idempotent) install script; returns the venv."""
    out = subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True, capture_output=True,
                         text=True, timeout=1800)
    return Path(out.stdout.strip().splitlines()[-1])


def environment(data_dir: Path, secret: str, redis_url: str, standin_url: str) -> dict:
    """open-webui's settings for the tier: its socket layer on Redis (the deployment the
    appliance joins), the stand-in as its only model provider, and nothing that would reach
    the internet or load a local model."""
    return env_with({
        "USE_SLIM_DOCKER": "true",  # else it imports chromadb and sentence-transformers
        "DATA_DIR": str(data_dir),
        "WEBUI_SECRET_KEY": secret,
        "WEBSOCKET_MANAGER": "redis",
        "WEBSOCKET_REDIS_URL": redis_url,
        "REDIS_URL": redis_url,
        "ENABLE_WEBSOCKET_SUPPORT": "true",
        "ENABLE_OLLAMA_API": "false",
        "ENABLE_OPENAI_API": "true",
        "OPENAI_API_BASE_URL": standin_url,
        "OPENAI_API_KEY": "x",
        # both users may use the stand-in model without an access grant per model
        "BYPASS_MODEL_ACCESS_CONTROL": "true",
        "DEFAULT_USER_ROLE": "user",
        "ENABLE_SIGNUP": "true",
        "ENABLE_CHANNELS": "true",
        "ENABLE_ENCRYPTED_CHANNELS": "true",
        "USER_PERMISSIONS_FEATURES_ENCRYPTED_CHANNELS": "true",
        # users may add their own OpenAI connection, called from their browser
        "ENABLE_DIRECT_CONNECTIONS": "true",
        "ENABLE_NOTES": "true",
        # background tasks would add requests (and log lines) to every chat: off
        "ENABLE_TITLE_GENERATION": "false",
        "ENABLE_TAGS_GENERATION": "false",
        "ENABLE_FOLLOW_UP_GENERATION": "false",
        "ENABLE_AUTOCOMPLETE_GENERATION": "false",
        "ENABLE_SEARCH_QUERY_GENERATION": "false",
        "ENABLE_RETRIEVAL_QUERY_GENERATION": "false",
        # offline: no model downloads, no version check, no telemetry
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
        "RAG_RERANKING_MODEL_AUTO_UPDATE": "false",
        "WHISPER_MODEL_AUTO_UPDATE": "false",
        "ENABLE_VERSION_UPDATE_CHECK": "false",
        "ENABLE_COMMUNITY_SHARING": "false",
        "SCARF_NO_ANALYTICS": "true",
        "DO_NOT_TRACK": "true",
        "ANONYMIZED_TELEMETRY": "false",
        "ENABLE_AUDIT_LOGS_FILE": "false",
        "GLOBAL_LOG_LEVEL": "INFO",
    })


def start_openwebui(venv: Path, port: int, env: dict, log: Path) -> Process:
    proc = Process("open-webui", [str(venv / "bin" / "open-webui"), "serve", "--host",
                                  "127.0.0.1", "--port", str(port)],
                   log, env=env, cwd=Path(env["DATA_DIR"])).start()
    wait_http(f"http://127.0.0.1:{port}/health", START_TIMEOUT, proc)
    return proc


def internet_attempts(log_text: str) -> list[str]:
    return [line for line in log_text.splitlines()
            if any(marker in line for marker in INTERNET_MARKERS)]


class Api:
    """open-webui's HTTP API as one user (or anonymous)."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base, self.token = base.rstrip("/"), token

    def call(self, method: str, path: str, body=None, expect: int = 200):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        resp = requests.request(method, self.base + path, json=body, headers=headers,
                                timeout=HTTP_TIMEOUT)
        if resp.status_code != expect:
            raise AssertionError(f"{method} {path}: {resp.status_code} {resp.text[:500]}")
        return resp.json() if resp.content else None

    def as_user(self, token: str) -> Api:
        return Api(self.base, token)

    # --- calls the flows use --------------------------------------------------------------

    def signup(self, name: str, email: str, password: str) -> dict:
        return self.call("POST", "/api/v1/auths/signup",
                         {"name": name, "email": email, "password": password})

    def signin(self, email: str, password: str) -> dict:
        return self.call("POST", "/api/v1/auths/signin", {"email": email, "password": password})

    def enable_signup(self) -> None:
        """What an admin does in Admin Settings > General: open-webui closes sign-ups once
        its first user (the admin) exists."""
        config = self.call("GET", "/api/v1/auths/admin/config")
        self.call("POST", "/api/v1/auths/admin/config", {**config, "ENABLE_SIGNUP": True})

    def me(self) -> dict:
        return self.call("GET", "/api/v1/auths/")

    def add_direct_connection(self, base_url: str, prefix: str) -> None:
        """Settings > Connections > "+" of the signed-in user: an OpenAI API the browser
        itself calls, its models listed as `<prefix>.<model>`."""
        settings = self.call("GET", "/api/v1/users/user/settings") or {}
        ui = dict(settings.get("ui") or {})
        ui["directConnections"] = {"OPENAI_API_BASE_URLS": [base_url], "OPENAI_API_KEYS": ["x"],
                                   "OPENAI_API_CONFIGS": {"0": {"enable": True,
                                                                "prefix_id": prefix}}}
        self.call("POST", "/api/v1/users/user/settings/update", {**settings, "ui": ui})

    def usage(self) -> dict:
        return self.call("GET", "/api/usage")

    def create_group_channel(self, name: str, member_ids: list[str]) -> dict:
        return self.call("POST", "/api/v1/channels/create",
                         {"name": name, "type": "group", "user_ids": member_ids})

    def create_note(self, title: str, md: str = "", html: str = "") -> dict:
        # the shape open-webui's own "New Note" button creates (md/html: a note written
        # before anyone opened it collaboratively, e.g. imported)
        return self.call("POST", "/api/v1/notes/create", {
            "title": title, "data": {"content": {"json": None, "html": html, "md": md}},
            "meta": None, "access_grants": []})

    def note(self, note_id: str) -> dict:
        return self.call("GET", f"/api/v1/notes/{note_id}")

    def share_note(self, note_id: str, user_id: str, permission: str = "write") -> dict:
        grants = [{"principal_type": "user", "principal_id": user_id, "permission": p}
                  for p in (("read", "write") if permission == "write" else ("read",))]
        return self.call("POST", f"/api/v1/notes/{note_id}/access/update",
                         {"access_grants": grants})
