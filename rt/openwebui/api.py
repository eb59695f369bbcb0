"""The calls the appliance makes to open-webui's HTTP API, each with a tab's own token.

Only what the socket layer needs: who the token is (`GET /api/v1/auths/`), the channels the
user is a member of, a note with its access, a chat (200 only with access), and a note
update. Answers are classified once here: `Refused` for 401/403 (the token or the access is
refused, an answer worth caching), `NotFound` for 404, `Unavailable` for everything that
says nothing about the token (connection refused, timeout, 5xx, a body that is not JSON).
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import orjson
import tornado.httpclient

log = logging.getLogger("rt.openwebui")

MAX_BODY = 8 * 1024 * 1024  # a channel list or a note is far below this


class OpenWebuiError(Exception):
    pass


class Unavailable(OpenWebuiError):
    """open-webui did not answer usefully: nothing is known about the token."""


class Refused(OpenWebuiError):
    def __init__(self, status: int, detail: str = ""):
        super().__init__(f"open-webui answered {status}{': ' + detail if detail else ''}")
        self.status = status


class NotFound(OpenWebuiError):
    pass


class OpenWebuiApi:
    def __init__(self, base_url: str, timeout: float, max_clients: int = 64):
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        # our own client instance: the relay's upstream streams must not take its slots
        self.http = tornado.httpclient.AsyncHTTPClient(
            force_instance=True, max_clients=max_clients, max_body_size=MAX_BODY)
        self.requests = 0  # sent, for metrics and for the coalescing tests

    def close(self) -> None:
        self.http.close()

    async def request(self, method: str, path: str, token: str, body: Any = None) -> Any:
        self.requests += 1
        req = tornado.httpclient.HTTPRequest(
            self.base + path, method=method,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json",
                     **({"Content-Type": "application/json"} if body is not None else {})},
            body=orjson.dumps(body) if body is not None else None,
            connect_timeout=self.timeout, request_timeout=self.timeout,
            follow_redirects=False)
        try:
            resp = await self.http.fetch(req, raise_error=False)
        except Exception as exc:  # DNS, refused connection, TLS: open-webui is not there
            raise Unavailable(f"{method} {path}: {exc}") from None
        if resp.code in (401, 403):
            raise Refused(resp.code, _detail(resp.body))
        if resp.code == 404:
            raise NotFound(path)
        if resp.code == 599 or resp.code >= 300:
            raise Unavailable(f"{method} {path}: HTTP {resp.code}")
        try:
            return orjson.loads(resp.body) if resp.body else None
        except orjson.JSONDecodeError:
            raise Unavailable(f"{method} {path}: answer is not JSON") from None

    # ------------------------------------------------------------------ the calls
    async def session_user(self, token: str) -> dict:
        user = await self.request("GET", "/api/v1/auths/", token)
        if not isinstance(user, dict) or not isinstance(user.get("id"), str):
            raise Unavailable("GET /api/v1/auths/: no user in the answer")
        return user

    async def channels(self, token: str) -> list[dict]:
        found = await self.request("GET", "/api/v1/channels/", token)
        return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []

    async def channel(self, token: str, channel_id: str) -> dict:
        found = await self.request("GET", f"/api/v1/channels/{quote(channel_id, safe='')}", token)
        if not isinstance(found, dict):
            raise NotFound(channel_id)
        return found

    async def features(self, token: str) -> dict:
        """The deployment's feature switches as the user's browser gets them."""
        config = await self.request("GET", "/api/config", token)
        features = config.get("features") if isinstance(config, dict) else None
        return features if isinstance(features, dict) else {}

    async def note(self, token: str, note_id: str) -> dict:
        note = await self.request("GET", f"/api/v1/notes/{quote(note_id, safe='')}", token)
        if not isinstance(note, dict):
            raise NotFound(note_id)
        return note

    async def chat(self, token: str, chat_id: str) -> dict:
        try:
            chat = await self.request("GET", f"/api/v1/chats/{quote(chat_id, safe='')}", token)
        except Refused as exc:
            # open-webui answers 401 "not found" for a chat the user may not see
            raise Refused(exc.status, "no access to this chat") from None
        return chat if isinstance(chat, dict) else {}

    async def update_note(self, token: str, note_id: str, data: dict) -> None:
        await self.request("POST", f"/api/v1/notes/{quote(note_id, safe='')}/update", token,
                           {"data": data})


def _detail(body: bytes | None) -> str:
    try:
        detail = orjson.loads(body or b"").get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return detail[:200] if isinstance(detail, str) else ""
