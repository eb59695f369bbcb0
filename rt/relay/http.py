"""HTTP endpoints of the chat relay (protocol §5.4).

- `POST /api/chat/completions` — the user's JWT as bearer; an OpenAI chat request with
  `stream: true`, `chat_id`, `id` (message id), optional `session_id`. Until the upstream
  has answered with its headers nothing is sent, so an upstream that refuses (HTTP error,
  unreachable, timeout) gives the caller a plain JSON error (`{"error", "message"}` with
  502/504, or the upstream's own 400/404/413/422/429). After that the caller gets the
  upstream's chunks as SSE, ended by `data: [DONE]` (done), `: cancelled` + `data: [DONE]`
  (cancelled), or an OpenAI-style `data: {"error": {...}}` (failed). The caller going away
  cancels the stream and the upstream request.
- `POST /api/chat/completions/{message_id}/cancel` — the owner's JWT, or the API key.
- `GET /api/v1/chats/{chat_id}/messages/{message_id}` — the API key, or the JWT of the
  user who asked; `{chat_id, message_id, content, status, usage?, updated_at}`; another
  user gets 404, as for a message that does not exist.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from tornado.iostream import StreamClosedError

from .. import payloads as p
from ..api import SEG, ContextHandler
from ..auth import AuthError, Identity, api_key_matches
from ..backends import Store
from .request import Failure, Outcome, RelayRefused, parse_chat_request
from .service import RelayService
from .stream import RelayStream


@dataclass
class RelayContext:
    service: RelayService
    store: Store
    identify: Callable[[Any], Awaitable[Identity]]  # Gateway.identify: JWT → Identity
    api_key: Callable[[], str]
    observe: Callable[[str, int], None] = lambda handler, code: None  # request metrics
    # (client address, body size) → None, or the error code refusing the request
    check_api: Callable[[str, int], str | None] = lambda ip, size: None
    # cluster mode: ask the other nodes to cancel (message id, owner or None); None alone
    cancel_elsewhere: Callable[[str, str | None], Awaitable[None]] | None = None


class RelayHandler(ContextHandler[RelayContext]):
    def prepare(self) -> None:
        # the same body-size and per-address limits as the rest of the HTTP API
        refused = self.ctx.check_api(self.client_ip(), len(self.request.body or b""))
        if refused == "too_large":
            self.fail("too_large", "request body is over [limits] api_max_body_bytes", 413)
        elif refused:
            self.fail(refused, "too many API requests from this address", 429)

    def bearer(self) -> str | None:
        header = self.request.headers.get("Authorization") or ""
        return header[7:].strip() if header.startswith("Bearer ") else None

    def has_api_key(self) -> bool:
        return api_key_matches(self.ctx.api_key(), self.request.headers.get("Authorization"))

    async def user(self) -> Identity | None:
        """The caller's verified identity; None after answering 401."""
        try:
            return await self.ctx.identify(self.bearer())
        except AuthError as exc:
            self.set_header("WWW-Authenticate", "Bearer")
            self.fail("unauthorized", f"a valid user token is required ({exc.code})", 401)
            return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, RelayRefused):
            return self.fail(exc.code, str(exc), exc.status)
        super().write_error(status_code, **kwargs)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, RelayRefused):
            return
        super().log_exception(typ, value, tb)

    async def owner(self) -> tuple[bool, str | None]:
        """(allowed, whose): a backend with the API key acts for anybody (None); a user
        acts for themself; without either the request was answered 401 (not allowed)."""
        if self.has_api_key():
            return True, None
        identity = await self.user()
        return (identity is not None), (identity.id if identity is not None else None)


def sse_data(raw: str) -> bytes:
    """One SSE event carrying `raw` (a JSON text, possibly with newlines) as its data."""
    if "\n" not in raw and "\r" not in raw:
        return b"data: " + raw.encode() + b"\n\n"
    lines = raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode() + b"\n"


def _failure(outcome: Outcome) -> Failure:
    if outcome.failure is None:  # every error outcome is made with its Failure
        raise ValueError(f"a {outcome.status!r} outcome has no Failure")
    return outcome.failure


class CompletionsHandler(RelayHandler):
    stream: RelayStream | None = None
    gone = False

    async def post(self) -> None:
        identity = await self.user()
        if identity is None:
            return
        request = parse_chat_request(self.json_body())
        self.stream = await self.ctx.service.start(identity, request, listen=True)
        if self.gone:  # went away while the stream was being set up
            self.stream.cancel("the caller went away")
        await self._relay(self.stream)

    def on_connection_close(self) -> None:
        self.gone = True
        if self.stream is not None:
            self.stream.cancel("the caller went away")

    def _open(self) -> None:
        self.set_status(200)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache, no-store")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream

    def _end(self, outcome: Outcome, opened: bool) -> bool:
        """Write the stream's end; False when the answer is a JSON error instead."""
        if outcome.status == "error" and not opened:
            failure = _failure(outcome)
            self.fail(failure.code, failure.message, failure.status)
            return False
        if not opened:
            self._open()
        if outcome.status == "done":
            self.write(b"data: [DONE]\n\n")
        elif outcome.status == "cancelled":
            reason = " ".join((outcome.reason or "cancelled").split())
            self.write(f": cancelled ({reason})\n\ndata: [DONE]\n\n".encode())
        else:
            failure = _failure(outcome)
            self.write(sse_data(orjson.dumps({"error": {
                "message": failure.message, "type": failure.code,
                "code": failure.status}}).decode()))
        return True

    async def _relay(self, stream: RelayStream) -> None:
        out = stream.output
        if out is None:
            raise RuntimeError("the stream was started without a listener (listen=False)")
        opened = False
        while True:
            batch = [await out.get()]
            while not out.empty():
                batch.append(out.get_nowait())
            if self.gone:
                return  # on_connection_close cancelled the stream; nobody to write to
            ended = False
            for item in batch:
                if item[0] == "open" and not opened:
                    opened = True
                    self._open()
                elif item[0] == "chunk":
                    self.write(sse_data(item[1]))
                elif item[0] == "end":
                    ended = True
                    if not self._end(item[1], opened):
                        return
                    break
            try:
                if ended:
                    await self.finish()
                    return
                await self.flush()
            except StreamClosedError:
                stream.cancel("the caller went away")
                return


class CancelHandler(RelayHandler):
    async def post(self, message_id: str) -> None:
        allowed, owner = await self.owner()
        if not allowed:
            return
        outcome = await self.ctx.service.cancel(message_id, owner,
                                                reason="cancelled by request")
        if outcome is None and self.ctx.cancel_elsewhere is not None:
            # not running here: the node that runs it cancels it (stored, tabs told)
            await self.ctx.cancel_elsewhere(message_id, owner)
            return self.reply({"message_id": message_id, "status": "cancel requested"}, 202)
        if outcome is None:
            # one that ended, or another user's: both look alike
            raise p.NotFound(f"no running stream for message {message_id!r}")
        self.reply({"message_id": message_id, "status": outcome.status})


class MessageHandler(RelayHandler):
    async def get(self, chat_id: str, message_id: str) -> None:
        allowed, owner = await self.owner()
        if not allowed:
            return
        message = await self.ctx.store.get_chat_message(chat_id, message_id)
        if message is None or (owner is not None and message.user_id != owner):
            raise p.NotFound(f"message {message_id!r} of chat {chat_id!r} does not exist")
        body: dict[str, Any] = {"chat_id": chat_id, "message_id": message_id,
                                "content": message.content, "status": message.status,
                                "updated_at": message.updated_at}
        if message.usage is not None:
            body["usage"] = message.usage
        self.reply(body)


def routes(ctx: RelayContext) -> list[tuple]:
    kw = {"ctx": ctx}
    return [
        ("/api/chat/completions", CompletionsHandler, kw),
        (f"/api/chat/completions/{SEG}/cancel", CancelHandler, kw),
        (f"/api/v1/chats/{SEG}/messages/{SEG}", MessageHandler, kw),
    ]


__all__ = ["RelayContext", "routes", "sse_data"]
