"""`join-channels` and `events:channel` (typing, read markers); channel rooms refreshed when
open-webui announces a channel."""
from __future__ import annotations

import logging
from typing import Any

from .. import payloads as p
from .. import rooms
from ..auth import Identity
from ..gateway import Gateway, Handler
from .service import ChannelService

log = logging.getLogger("rt.conn")


class ChannelEvents:
    def __init__(self, gateway: Gateway, channels: ChannelService):
        self.gateway = gateway
        self.channels = channels

    def handlers(self) -> dict[str, Handler]:
        return {"join-channels": self.join_channels, "events:channel": self.channel_event}

    async def join_channels(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        data = p.obj(data)
        gateway = self.gateway
        gateway.check_token(sid, identity, data)
        wanted = await gateway.rights.channels_of(identity, gateway.tokens.get(sid), fresh=True)
        current = {rooms.channel(c) for c in rooms.ids("channel", gateway.sio.rooms(sid))}
        for room in current - {rooms.channel(c) for c in wanted}:
            await gateway.sio.leave_room(sid, room)
        await gateway.enter_rooms(sid, [rooms.channel(c) for c in wanted])
        return {"channels": sorted(wanted)}

    async def channel_event(self, sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        channel_id = p.ident(data, "channel_id")
        message_id = p.ident(data, "message_id", required=False)
        inner = p.obj(data.get("data"), "'data'")
        kind = p.text(inner, "type", max_len=64, required=True)
        gateway = self.gateway
        if not gateway.sio.manager.in_room(sid, rooms.channel(channel_id)):
            raise p.Forbidden("not a member of this channel")
        if kind == "last_read_at":
            await gateway.ledger.channel_read(identity, gateway.tokens.get(sid), channel_id)
            return
        await self.channels.client_event(sid, identity, channel_id, message_id, kind,
                                         inner.get("data"))

    async def refresh_channels(self, user_id: str) -> None:
        """open-webui created a channel with this user in it (or added them): enter their
        sessions here into the channels they are now in. open-webui's own
        `enter_room_for_users` reaches only its own sockets, and the browser does not send
        `join-channels` for it."""
        gateway = self.gateway
        for sid in gateway.members(rooms.user(user_id)):
            identity = gateway.identities.get(sid)
            if identity is None:
                continue
            try:
                wanted = await gateway.rights.channels_of(identity, gateway.tokens.get(sid),
                                                          fresh=True)
                await gateway.enter_rooms(sid, [rooms.channel(c) for c in wanted])
            except p.EventError as exc:
                log.info("channels of %s not refreshed for %s: %s", user_id, sid, exc)
