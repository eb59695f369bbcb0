"""A chat request as the relay takes it, and the outcomes and failures of a stream: what
the HTTP edge parses and what a finished stream reports."""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

import orjson

from .. import payloads as p

MAX_CONTENT = 8 << 20  # characters of one answer
MAX_ERROR_BODY = 64 << 10  # bytes of an upstream error body kept for its message
MAX_PLAIN_BODY = 16 << 20  # bytes of a non-streamed JSON answer
MAX_STREAM_BYTES = 1 << 30  # bytes of one upstream response, framing included
RELAY_FIELDS = ("chat_id", "id", "session_id")  # ours; never sent upstream
PASS_STATUS = {400, 404, 413, 422, 429}  # upstream statuses the caller gets as they are
DONE_GRACE = 1.0  # seconds the upstream may take to end its response after [DONE]
STATUSES = ("done", "cancelled", "error")


class RelayRefused(Exception):
    """The relay will not start (or find) a stream: a wire error code and HTTP status."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class ChatRequest:
    chat_id: str
    message_id: str
    session_id: str | None
    payload: dict  # the OpenAI request as it goes upstream


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate the caller's body; raises payloads.BadRequest."""
    body = p.obj(body, "body")
    chat_id = p.ident(body, "chat_id")
    message_id = p.ident(body, "id")
    session_id = p.ident(body, "session_id", required=False)
    stream = body.get("stream", True)
    if stream is not True:
        raise p.BadRequest("'stream' must be true: the relay only streams")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise p.BadRequest("'messages' must be a non-empty list")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise p.BadRequest("'model' must be a non-empty string")
    payload = {k: v for k, v in body.items() if k not in RELAY_FIELDS}
    payload["stream"] = True
    return ChatRequest(chat_id, message_id, session_id, payload)


@dataclass(frozen=True)
class Failure:
    """Why a stream failed, in words for a person; `status`/`code` are what an HTTP caller
    that has not yet received the stream's head gets."""

    message: str
    status: int = 502
    code: str = "upstream_error"


@dataclass(frozen=True)
class Outcome:
    status: str  # done | cancelled | error
    content: str
    usage: dict | None = None
    failure: Failure | None = None
    reason: str | None = None  # why it was cancelled


# ---------------------------------------------------------------------- upstream plumbing
#STREAM


def _where(base_url: str) -> str:
    """scheme://host:port of the upstream, never its credentials or path."""
    parts = urllib.parse.urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def error_text(error: Any) -> str:
    """The readable part of an upstream error object (OpenAI, Ollama, vLLM, llama.cpp)."""
    if isinstance(error, dict):
        for key in ("message", "detail", "error", "msg"):
            value = error.get(key)
            if isinstance(value, (str, dict)) and value:
                return error_text(value)
        return _clip(orjson.dumps(error).decode())
    if isinstance(error, str):
        return _clip(error)
    return _clip(repr(error))


def http_failure(code: int, body: bytes) -> Failure:
    detail = ""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
        detail = _clip(body.decode("utf-8", "replace"))
    if parsed is not None:
        detail = error_text(parsed)
    message = f"the upstream answered HTTP {code}" + (f": {detail}" if detail else "")
    return Failure(message, code if code in PASS_STATUS else 502)


# ---------------------------------------------------------------------- one stream
