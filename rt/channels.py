"""Channel events from clients: typing indicators and read markers."""
from __future__ import annotations

import time
from typing import Any, Callable

from . import rooms
from .auth import Identity
from .backends import Store
from .emitter import Emitter
from .payloads import BadRequest, RateLimited
from .ratelimit import Buckets


class ChannelService:
    def __init__(self, store: Store, emitter: Emitter, typing: Buckets,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.emitter = emitter
        self.typing_buckets = typing
        self.clock = clock

    async def client_event(self, sid: str, identity: Identity, channel_id: str,
                           message_id: str | None, kind: str, data: Any) -> None:
        if kind == "typing":
            if not self.typing_buckets.allow(sid):
                raise RateLimited("typing events are limited per connection")
            await self.emitter.to_room("events:channel", {
                "channel_id": channel_id,
                "message_id": message_id,
                "data": {"type": "typing", "data": data},
                # who is typing comes from the verified identity, never from the payload
                "user": identity.public(),
            }, rooms.channel(channel_id))
        elif kind == "last_read_at":
            await self.store.set_channel_read(channel_id, identity.id, self.clock())
        else:
            raise BadRequest(f"unsupported channel event type {kind!r}")

    def forget(self, sid: str) -> None:
        self.typing_buckets.forget(sid)
