"""`events:chat` of open-webui 0.12's shared chats: join/leave the chat's room (with the
viewers' presence), typing to its other viewers, read markers."""
from __future__ import annotations

from typing import Any

from .. import payloads as p
from .. import rooms
from ..auth import Identity
from ..gateway import Gateway, Handler

# open-webui's chat ids that are not saved chats (temporary, channel threads): no room
UNSAVED_CHAT_PREFIXES = ("temporary:", "local:", "channel:")
CHAT_EVENT_TYPES = ("join", "leave", "typing", "last_read_at")


class ChatEvents:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def handlers(self) -> dict[str, Handler]:
        return {"events:chat": self.chat_event}

    async def disconnected(self, sid: str, identity: Identity) -> None:
        """The other viewers of the session's chats see it leave."""
        for chat_id in rooms.ids("chat", self.gateway.sio.rooms(sid)):
            await self._publish_chat_presence(chat_id, leaving=sid)

    async def chat_event(self, sid: str, identity: Identity, data: Any) -> bool | None:
        """open-webui 0.12 shared chats: join/leave the chat's room (with presence), typing
        to its other viewers, read markers. join/leave/typing are acked with a boolean like
        open-webui's (False = refused, e.g. no access)."""
        data = p.obj(data)
        chat_id = p.ident(data, "chat_id")
        inner = p.obj(data.get("data"), "'data'")
        kind = p.text(inner, "type", max_len=64, required=True)
        if kind not in CHAT_EVENT_TYPES:
            raise p.BadRequest(f"unsupported chat event type {kind!r}")
        token = self.gateway.tokens.get(sid)
        if kind == "last_read_at":
            await self.gateway.ledger.chat_read(identity, token, chat_id)
            return None
        if chat_id.startswith(UNSAVED_CHAT_PREFIXES):
            return False
        room = rooms.chat(chat_id)
        if kind == "leave":
            await self.gateway.sio.leave_room(sid, room)
            await self.gateway.ledger.chat_joined(sid, chat_id, False)
            await self._publish_chat_presence(chat_id)
            return True
        if kind == "join":
            if await self.gateway.rights.chat_access(identity, token, chat_id) is None:
                return False
            await self.gateway.enter_rooms(sid, [room])
            await self.gateway.ledger.chat_joined(sid, chat_id, True)
            await self._publish_chat_presence(chat_id)
            return True
        extra = inner.get("data")
        typing = extra.get("typing") if isinstance(extra, dict) else None
        if not isinstance(typing, bool) or not self.gateway.sio.manager.in_room(sid, room):
            return False
        if await self.gateway.rights.chat_access(identity, token, chat_id) != "write":
            return False
        payload = {"chat_id": chat_id, "user_id": identity.id, "user": identity.public(),
                   "shared": True, "data": {"type": "typing", "data": {"typing": typing}}}
        await self.gateway.typing.offer(sid, room, lambda: self.gateway.sio.emit(
            "events", payload, room=room, skip_sid=sid))
        return True

    async def _publish_chat_presence(self, chat_id: str, leaving: str | None = None) -> None:
        room = rooms.chat(chat_id)
        local = [(ident.id, ident.name) for sid in self.gateway.members(room) if sid != leaving
                 and (ident := self.gateway.identities.get(sid)) is not None]
        users = await self.gateway.ledger.chat_members(chat_id, local)
        await self.gateway.sio.emit("events", {
            "chat_id": chat_id, "shared": True,
            "data": {"type": "chat:presence", "data": {"users": users}}}, room=room)
