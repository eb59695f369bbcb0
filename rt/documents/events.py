"""The `ydoc:*` client events (protocol §3) and `join-note`: parse the payload, call the
document service.

User ids and names always come from the connection's identity; the `user_id`,
`user_name` and `socket_id` the open-webui editor puts in its payloads are ignored. The
cosmetic `user_color` is taken from the payload when it is a short string.

`ydoc:document:update` comes in three forms: an update (with or without `data.content`),
a content-only update (`data.content` and no `update`), and open-webui 0.12's seed
(`initialize: true`), whose ack is a Yjs state the editor applies as it is: a list of
ints, or null when the seed was refused. A refused seed is therefore explained in an
`error` event, as failures of events without an ack are, never in the ack.
"""
from __future__ import annotations

import logging
from typing import Any

from .. import payloads as p
from .. import rooms
from ..auth import Identity
from ..core.errors import StoreError
from ..gateway import Gateway, Handler
from .service import _MISSING, CollabService

log = logging.getLogger("rt.conn")

MAX_COLOR = 64
UPDATE = "ydoc:document:update"


def _content(data: dict[str, Any]) -> Any:
    """`data.content`, or _MISSING when the payload has none."""
    extra = data.get("data")
    if extra is None:
        return _MISSING
    return p.obj(extra, "'data'").get("content", _MISSING)


class DocumentEvents:
    def __init__(self, gateway: Gateway, collab: CollabService):
        self.gateway = gateway
        self.collab = collab

    # an editor typing at acknowledgement speed is slowed by backpressure, never refused:
    # open-webui's editor does not resend a refused update (its note would diverge)
    paced = frozenset({UPDATE, "ydoc:awareness:update"})

    def handlers(self) -> dict[str, Handler]:
        return {
            "join-note": self.join_note,
            "ydoc:document:join": self.join,
            "ydoc:document:state": self.state,
            UPDATE: self.update,
            "ydoc:document:leave": self.leave,
            "ydoc:awareness:update": self.awareness,
        }

    async def disconnected(self, sid: str, identity: Identity) -> None:
        await self.collab.disconnected(sid, identity)

    async def join_note(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        """The note's own room (open-webui's `note-events`), for readers of the note."""
        data = p.obj(data)
        note_id = p.ident(data, "note_id")
        gateway = self.gateway
        gateway.check_token(sid, identity, data)
        if await gateway.rights.note_access(identity, gateway.tokens.get(sid), note_id) is None:
            raise p.Forbidden("no read access to this note")
        await gateway.enter_rooms(sid, [rooms.note(note_id)])
        return {"ok": True}

    async def join(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        data = p.obj(data)
        document_id = p.ident(data, "document_id")
        color = data.get("user_color")
        if not isinstance(color, str) or len(color) > MAX_COLOR:
            color = None
        return await self.collab.join(sid, identity, document_id, color)

    async def state(self, sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        await self.collab.state(sid, identity, p.ident(data, "document_id"))

    async def update(self, sid: str, identity: Identity, data: Any) -> Any:
        data = p.obj(data)
        flag = data.get("initialize")
        if flag is True:
            return await self.initialize(sid, identity, data)
        if flag not in (None, False):
            raise p.BadRequest("'initialize' must be a boolean")
        document_id = p.ident(data, "document_id")
        content = _content(data)
        if "update" in data:
            return await self.collab.update(sid, identity, document_id, data["update"], content)
        if content is _MISSING:
            raise p.BadRequest("'update' or 'data.content' is required")
        return await self.collab.set_content(sid, identity, document_id, content)

    async def initialize(self, sid: str, identity: Identity, data: dict[str, Any]) -> Any:
        try:
            document_id = p.ident(data, "document_id")
            if "update" not in data:
                raise p.BadRequest("'update' is required")
            state = await self.collab.initialize(sid, identity, document_id, data["update"],
                                                 _content(data))
            return list(state)
        except p.EventError as exc:
            log.info("event %s (initialize) from %s refused: %s %s", UPDATE, sid, exc.code, exc)
            error = exc
        except StoreError as exc:
            log.warning("event %s (initialize) from %s failed: store unavailable: %s",
                        UPDATE, sid, exc)
            error = p.EventError("the store is unavailable, try again", "internal")
        await self.gateway.report(sid, UPDATE, error)
        return (None,)  # a tuple: the ack carries one argument, null

    async def leave(self, sid: str, identity: Identity, data: Any) -> dict[str, Any]:
        data = p.obj(data)
        return await self.collab.leave(sid, identity, p.ident(data, "document_id"))

    async def awareness(self, sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        document_id = p.ident(data, "document_id")
        if "update" not in data:
            raise p.BadRequest("'update' is required")
        await self.collab.awareness(sid, identity, document_id, data["update"])
