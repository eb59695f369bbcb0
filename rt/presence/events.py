"""`user-join` and `heartbeat`: a session states its user and keeps them marked active."""
from __future__ import annotations

from typing import Any

from .. import payloads as p
from .. import rooms
from ..auth import Identity
from ..gateway import Gateway, Handler


class PresenceEvents:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def handlers(self) -> dict[str, Handler]:
        return {"user-join": self.user_join, "heartbeat": self.heartbeat}

    async def user_join(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        """The session's user (and its channels' rooms, as open-webui's own handler does)."""
        data = p.obj(data)
        gateway = self.gateway
        gateway.check_token(sid, identity, data)
        channel_ids = await gateway.rights.channels_of(identity, gateway.tokens.get(sid),
                                                       fresh=True)
        await gateway.enter_rooms(sid, [rooms.user(identity.id)]
                                  + [rooms.channel(c) for c in channel_ids])
        return identity.public()

    async def heartbeat(self, sid: str, identity: Identity, data: Any) -> None:
        if data is not None and not isinstance(data, dict):
            raise p.BadRequest("payload must be an object")
        gateway = self.gateway
        gateway.presence.heartbeat(identity.id)
        if gateway.ledger.records_heartbeats:
            await gateway.ledger.heartbeat(sid, identity, gateway.tokens.get(sid))
