"""Validation of client event payloads and API bodies: small, explicit, no framework.

Every failure is a `BadRequest` carrying the wire error code, so the dispatcher (gateway)
and the HTTP API answer it the same way and nothing downstream sees a malformed value.
"""
from __future__ import annotations

from typing import Any, Literal, overload

MAX_ID = 256  # ids are uuids in open-webui; this bounds memory per room name


class EventError(Exception):
    """A refused client action: `code` is one of the protocol's error codes."""

    code = "bad_request"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    def payload(self) -> dict:
        return {"error": self.code, "message": str(self)}


class BadRequest(EventError):
    code = "bad_request"


class Forbidden(EventError):
    code = "forbidden"


class NotFound(EventError):
    code = "not_found"


class TooLarge(EventError):
    code = "too_large"


class RateLimited(EventError):
    code = "rate_limited"


def obj(value: Any, what: str = "payload") -> dict:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    return value


@overload
def ident(data: dict[str, Any], key: str, required: Literal[True] = True) -> str: ...
@overload
def ident(data: dict[str, Any], key: str, required: bool) -> str | None: ...
def ident(data: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise BadRequest(f"'{key}' must be a non-empty string of at most {MAX_ID} characters")
    return value


@overload
def text(data: dict[str, Any], key: str, max_len: int = ...,
         *, required: Literal[True]) -> str: ...
@overload
def text(data: dict[str, Any], key: str, max_len: int = ...,
         required: bool = ...) -> str | None: ...
def text(data: dict[str, Any], key: str, max_len: int = 1024,
         required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise BadRequest(f"'{key}' must be a string of at most {max_len} characters")
    return value


def id_list(data: dict, key: str, required: bool = True, max_items: int = 100_000) -> list[str]:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or len(value) > max_items:
        raise BadRequest(f"'{key}' must be a list of ids")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_ID:
            raise BadRequest(f"'{key}' must be a list of non-empty strings")
    return list(dict.fromkeys(value))  # de-duplicated, order kept


def token_of(data: dict) -> str | None:
    """The `auth.token` some events carry; absent is allowed, malformed is not."""
    auth = data.get("auth")
    if auth is None:
        return None
    auth = obj(auth, "'auth'")
    token = auth.get("token")
    if token is not None and not isinstance(token, str):
        raise BadRequest("'auth.token' must be a string")
    return token
