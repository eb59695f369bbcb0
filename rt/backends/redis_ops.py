"""How everything kept in Redis runs its operations: Lua scripts by hash, and one deadline
and one gate per operation with Redis errors turned into StoreError.

The store (redis_store.py), the registries (redis_presence.py, redis_usage.py,
redis_editors.py) and the encryption relay state all build on `RedisUser`.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from hashlib import sha1
from typing import Any, TypeVar

from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core.errors import StoreError
from .redis_conn import REDIS_ERRORS, AnyRedis, KeySpace, drop_idle, ensure_ready, gate, op_timeout

T = TypeVar("T")


class Lua:
    """A script run by EVALSHA, falling back to EVAL when the server does not know it yet
    (new server, restart, failover: script caches are not replicated)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = sha1(source.encode()).hexdigest()

    async def __call__(self, client: AnyRedis, keys: Sequence[str],
                       args: Sequence[Any] = ()) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


class RedisUser:
    """Shared plumbing of everything kept in Redis: the gate that waits out a Cluster's
    start-up, and Redis errors turned into StoreError."""

    def __init__(self, client: AnyRedis, keys: KeySpace, where: str) -> None:
        self.client = client
        self.keys = keys
        self.where = where
        self._gate = gate(client)
        self.timeout = op_timeout(client)

    async def _run(self, op: Callable[[AnyRedis], Awaitable[T]]) -> T:
        try:
            # not under the deadline: a discovery cut short would start over at the same
            # unreachable node each time; it is bounded by the connect timeout per node
            await ensure_ready(self.client)
            # One deadline for the rest: waiting at the gate, reconnecting and redis-py's
            # retries (each with its own socket timeout) included, so a silent Redis fails
            # the request after redis_timeout, not a multiple of it.
            async with asyncio.timeout(self.timeout):
                async with self._gate:
                    return await op(self.client)
        except (TimeoutError, RedisTimeoutError) as exc:
            await drop_idle(self.client)
            raise StoreError(f"{self.where}: no answer within {self.timeout:g} s") from exc
        except REDIS_ERRORS as exc:
            raise StoreError(f"{self.where}: {exc or type(exc).__name__}") from exc

    async def _lua(self, script: Lua, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        return await self._run(lambda c: script(c, keys, args))


def text(value: bytes | str) -> str:
    """A name or id as Redis returned it (bytes: every client is built without decoding)."""
    return value.decode() if isinstance(value, bytes) else value
