"""The `ydoc:*` client events (protocol §3): parse the payload, call the document service.

User ids and names always come from the connection's identity; the `user_id`,
`user_name` and `socket_id` the open-webui editor puts in its payloads are ignored. The
cosmetic `user_color` is taken from the payload when it is a short string.
"""
from __future__ import annotations

from typing import Any

from . import payloads as p
from .collab import _MISSING, CollabService

MAX_COLOR = 64


def register(gateway, collab: CollabService) -> None:
    async def join(sid: str, identity, data: Any) -> dict:
        data = p.obj(data)
        document_id = p.ident(data, "document_id")
        color = data.get("user_color")
        if not isinstance(color, str) or len(color) > MAX_COLOR:
            color = None
        return await collab.join(sid, identity, document_id, color)

    async def state(sid: str, identity, data: Any) -> None:
        data = p.obj(data)
        await collab.state(sid, identity, p.ident(data, "document_id"))

    async def update(sid: str, identity, data: Any) -> dict:
        data = p.obj(data)
        document_id = p.ident(data, "document_id")
        if "update" not in data:
            raise p.BadRequest("'update' is required")
        extra = data.get("data")
        content = _MISSING
        if extra is not None:
            extra = p.obj(extra, "'data'")
            content = extra.get("content", _MISSING)
        return await collab.update(sid, identity, document_id, data["update"], content)

    async def leave(sid: str, identity, data: Any) -> dict:
        data = p.obj(data)
        return await collab.leave(sid, identity, p.ident(data, "document_id"))

    async def awareness(sid: str, identity, data: Any) -> None:
        data = p.obj(data)
        document_id = p.ident(data, "document_id")
        if "update" not in data:
            raise p.BadRequest("'update' is required")
        await collab.awareness(sid, identity, document_id, data["update"])

    gateway.event("ydoc:document:join", join)
    gateway.event("ydoc:document:state", state)
    gateway.event("ydoc:document:update", update)
    gateway.event("ydoc:document:leave", leave)
    gateway.event("ydoc:awareness:update", awareness)
    gateway.disconnect_hooks.append(collab.disconnected)
