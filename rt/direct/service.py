"""The stream of a direct-connection completion, from the browser to open-webui's backend.

With a direct connection the browser itself calls the model's API and sends each SSE line
back as an event named `{user_id}:{session_id}:{request_id}` (the channel open-webui put in
its `request:chat:completion` call), then `{done: true}`. open-webui's backend listens for
them on Redis: its workers subscribe to `{prefix}:direct_completion` and route each
message `{"channel": <event name>, "data": <first argument>}` to the request waiting for
it (open-webui 0.12 `socket/main.py` socket_event_handler and redis_event_listener).

So an event of that shape is accepted only from a session whose user is the first part
of the name (nobody feeds another user's completion), and published in arrival order per
session, each publish finished before the next event of that session goes out. Without
Redis there is no open-webui backend to hear it: such events are refused, saying why.

The gateway's catch-all handler offers every event it does not know to `handle`.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .. import payloads as p
from ..auth import Identity
from ..backends.redis_conn import KeySpace
from ..backends.redis_store import RedisUser
from ..core.errors import StoreError

log = logging.getLogger("rt.conn")

CHANNEL = "direct_completion"  # under the key prefix, as open-webui names it
SEGMENTS = 3


class Publisher(Protocol):
    async def publish(self, message: bytes) -> None:
        """Raise StoreError when the message did not go out."""


class RedisPublisher(RedisUser):
    """PUBLISH on one channel, with the gate, the deadline and the error handling of every
    other Redis use of the appliance (a failure is a StoreError)."""

    def __init__(self, client, keys: KeySpace, where: str, name: str = CHANNEL) -> None:
        super().__init__(client, keys, where)
        self.channel = keys.channel(name)

    async def publish(self, message: bytes) -> None:
        await self._run(lambda c: c.publish(self.channel, message))


@dataclass
class _Turn:
    """The events of one session waiting to be published, in arrival order."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class DirectStream:
    def __init__(self, publisher: Publisher | None) -> None:
        self.publisher = publisher  # None: single node, nobody to publish to
        self._turns: dict[str, _Turn] = {}  # sid → its turn, while it has events in flight
        self.published = 0

    @classmethod
    def for_backend(cls, backend, key_prefix: str) -> DirectStream:
        """Publishes through the backend's Redis client, under `key_prefix` (`[state]
        key_prefix`: open-webui's backend shares both); refuses without Redis."""
        if backend.redis is None:
            return cls(None)
        return cls(RedisPublisher(backend.redis, KeySpace(key_prefix), "Redis"))

    @staticmethod
    def owner(event: Any) -> str | None:
        """The user id an event name of the stream's shape starts with, else None."""
        if not isinstance(event, str) or event.count(":") != SEGMENTS - 1:
            return None
        parts = event.split(":")
        if not all(parts) or any(len(part) > p.MAX_ID for part in parts):
            return None
        return parts[0]

    async def handle(self, sid: str, identity: Identity, event: str, args: tuple) -> bool:
        """False when `event` is not a stream event (the caller goes on); True once it was
        published. A stream event that cannot be published raises p.EventError."""
        owner = self.owner(event)
        if owner is None:
            return False
        if owner != identity.id:
            raise p.Forbidden("a direct-connection stream event must name the sender's own "
                              "user id first")
        if self.publisher is None:
            raise p.BadRequest("direct-connection streams go to open-webui's backend through "
                               "Redis: this appliance runs on one node without Redis")
        if not args:
            raise p.BadRequest("a direct-connection stream event needs a payload")
        message = _encode({"channel": event, "data": args[0]})
        # Handlers of one session already run one at a time; the turn keeps the order
        # even if they did not (asyncio.Lock wakes its waiters first come, first served).
        turn = self._turns.setdefault(sid, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                await self.publisher.publish(message)
        except StoreError as exc:
            log.warning("direct-connection stream %s of %s not published: %s", event, sid, exc)
            raise p.EventError("the store is unavailable, try again", "internal") from None
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[sid]
        self.published += 1
        return True


def _encode(message: dict) -> bytes:
    """JSON as open-webui writes it: orjson, or the standard library for what orjson
    refuses but JSON has (integers beyond 64 bits)."""
    try:
        return orjson.dumps(message)
    except TypeError:
        pass
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError):  # binary, NaN, too deep: not JSON
        raise p.BadRequest("a direct-connection stream payload must be JSON") from None
