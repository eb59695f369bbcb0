"""Channel events from clients: typing indicators (read markers go to the ledger)."""
from __future__ import annotations

from typing import Any

from .. import rooms
from ..auth import Identity
from ..emitter import Emitter
from ..payloads import BadRequest
from ..typing_gate import TypingGate


class ChannelService:
    def __init__(self, emitter: Emitter, typing: TypingGate):
        self.emitter = emitter
        self.typing = typing

    async def client_event(self, sid: str, identity: Identity, channel_id: str,
                           message_id: str | None, kind: str, data: Any) -> None:
        if kind != "typing":
            raise BadRequest(f"unsupported channel event type {kind!r}")
        room = rooms.channel(channel_id)
        payload = {
            "channel_id": channel_id,
            "message_id": message_id,
            "data": {"type": "typing", "data": data},
            # who is typing comes from the verified identity, never from the payload;
            # open-webui's typing events carry the role too
            "user": {**identity.public(), "role": identity.role},
        }
        # one event per keystroke from open-webui's editor: above the rate, coalesced
        await self.typing.offer(sid, room, lambda: self.emitter.to_room(
            "events:channel", payload, room))
