"""Where an `encryption:event` for one participant goes.

A participant is a sid: of a browser on an appliance node (this one or another), or, when
one session holds browsers of both servers, of a browser on open-webui's own socket server.
The shared state keeps only the sid (as open-webui does), so each recipient is looked up:

- a sid of this node, or one the presence registry knows (another node's): the client
  manager's emit, which reaches it on whichever appliance node holds it;
- any other sid is open-webui's: python-socketio's own pub/sub `emit` message for that sid,
  published where open-webui's manager listens (its main channel, which both its stock and
  its room-channel manager read). Appliance nodes ignore it: the sid is none of theirs.

Without a publisher (embedded state, or no pub/sub with open-webui) every sid goes through
the client manager.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Container
from typing import Any

from ..backends import PresenceRegistry

Publish = Callable[[bytes], Awaitable[Any]]


def socketio_emit(event: str, data: Any, sid: str, host_id: str) -> bytes:
    """python-socketio 5.x's pub/sub message for `emit(event, data, to=sid)`."""
    return json.dumps({
        "method": "emit", "event": event, "data": [data], "binary": False, "namespace": "/",
        "room": sid, "skip_sid": None, "callback": None, "host_id": host_id,
    }, separators=(",", ":")).encode()


class SidDelivery:
    def __init__(self, sio, *, local: Container[str] = (),
                 presence: PresenceRegistry | None = None,
                 publish: Publish | None = None, host_id: str = "") -> None:
        self.sio = sio
        self.local = local  # the sids this node serves (the gateway's identities)
        self.presence = presence
        self.publish = publish
        self.host_id = host_id
        self.counts: Counter[str] = Counter()  # "appliance" / "openwebui" deliveries

    async def emit(self, event: str, data: Any, sid: str) -> None:
        if self.publish is None or await self.is_appliance_sid(sid):
            self.counts["appliance"] += 1
            await self.sio.emit(event, data, to=sid)
            return
        self.counts["openwebui"] += 1
        await self.publish(socketio_emit(event, data, sid, self.host_id))

    async def is_appliance_sid(self, sid: str) -> bool:
        if sid in self.local:
            return True
        return self.presence is not None and await self.presence.user_of(sid) is not None
