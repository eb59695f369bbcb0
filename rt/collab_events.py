"""The `ydoc:*` client events (protocol §3): parse the payload, call the document service.

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

from . import payloads as p
from .auth import Identity
from .collab import _MISSING, CollabService
from .core.errors import StoreError

log = logging.getLogger("rt.conn")

MAX_COLOR = 64
UPDATE = "ydoc:document:update"


def _content(data: dict) -> Any:
    """`data.content`, or _MISSING when the payload has none."""
    extra = data.get("data")
    if extra is None:
        return _MISSING
    return p.obj(extra, "'data'").get("content", _MISSING)


def register(gateway, collab: CollabService) -> None:
    async def join(sid: str, identity: Identity, data: Any) -> dict:
        data = p.obj(data)
        document_id = p.ident(data, "document_id")
        color = data.get("user_color")
        if not isinstance(color, str) or len(color) > MAX_COLOR:
            color = None
        return await collab.join(sid, identity, document_id, color)

    async def state(sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        await collab.state(sid, identity, p.ident(data, "document_id"))

    async def update(sid: str, identity: Identity, data: Any) -> Any:
        data = p.obj(data)
        flag = data.get("initialize")
        if flag is True:
            return await initialize(sid, identity, data)
        if flag not in (None, False):
            raise p.BadRequest("'initialize' must be a boolean")
        document_id = p.ident(data, "document_id")
        content = _content(data)
        if "update" in data:
            return await collab.update(sid, identity, document_id, data["update"], content)
        if content is _MISSING:
            raise p.BadRequest("'update' or 'data.content' is required")
        return await collab.set_content(sid, identity, document_id, content)

    async def initialize(sid: str, identity: Identity, data: dict) -> Any:
        try:
            document_id = p.ident(data, "document_id")
            if "update" not in data:
                raise p.BadRequest("'update' is required")
            state = await collab.initialize(sid, identity, document_id, data["update"],
                                            _content(data))
            return list(state)
        except p.EventError as exc:
            log.info("event %s (initialize) from %s refused: %s %s", UPDATE, sid, exc.code, exc)
            error = exc
        except StoreError as exc:
            log.warning("event %s (initialize) from %s failed: store unavailable: %s",
                        UPDATE, sid, exc)
            error = p.EventError("the store is unavailable, try again", "internal")
        gateway.errors[error.code] = gateway.errors.get(error.code, 0) + 1
        await gateway.sio.emit("error", {"message": str(error), "error": error.code,
                                         "event": UPDATE}, to=sid)
        return (None,)  # a tuple: the ack carries one argument, null

    async def leave(sid: str, identity: Identity, data: Any) -> dict:
        data = p.obj(data)
        return await collab.leave(sid, identity, p.ident(data, "document_id"))

    async def awareness(sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        document_id = p.ident(data, "document_id")
        if "update" not in data:
            raise p.BadRequest("'update' is required")
        await collab.awareness(sid, identity, document_id, data["update"])

    gateway.event("ydoc:document:join", join)
    gateway.event("ydoc:document:state", state)
    gateway.event(UPDATE, update)
    gateway.event("ydoc:document:leave", leave)
    gateway.event("ydoc:awareness:update", awareness)
    gateway.disconnect_hooks.append(collab.disconnected)
