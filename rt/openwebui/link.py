"""open-webui's side of the appliance, built in one piece from `[openwebui]` settings.

The composition root (app.py) builds this when `[openwebui] url` is set and takes from it
the identity source, the rights and the ledger the gateway uses, the note writer the
document service hands contents to, and the background work to run.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson

from ..auth import Identity, TokenVerifier
from ..core.tasks import every
from ..metrics import Figure
from .api import NotFound, OpenWebuiApi, Refused
from .cache import TtlCache
from .identities import OpenWebuiIdentities
from .ledger import OpenWebuiLedger
from .pools import REFRESH_INTERVAL, OpenWebuiPools
from .rights import OpenWebuiRights
from .socket_port import OpenWebuiSocket
from .writeback import EchoMarks, NoteWriter, ReadMarkers


class OpenWebuiLink:
    def __init__(self, settings, verifier: TokenVerifier, redis: Any = None):
        o = settings.openwebui
        prefix = settings.state.key_prefix
        self.api = OpenWebuiApi(o.url, o.request_timeout)
        # refusals are answers (cached); unreachable is not (never cached)
        self.cache: TtlCache = TtlCache(o.cache_ttl, o.cache_size,
                                        cache_errors=(Refused, NotFound))
        self.identities = OpenWebuiIdentities(verifier, self.api, self.cache, redis, prefix)
        self.rights = OpenWebuiRights(self.api, self.cache)
        self.pools = OpenWebuiPools(redis, prefix) if redis is not None else None
        self.markers = ReadMarkers(OpenWebuiSocket(o.url, o.request_timeout))
        self.ledger = OpenWebuiLedger(self.identities, self.markers, self.pools)
        self.echoes = EchoMarks(redis, prefix)
        self.notes = NoteWriter(self.api, self.echoes)

    def content_hook(self, token_for: Callable[[str], str | None]):
        """The document service's `on_content`: a note's rendered content goes to open-webui
        with its last editor's token (other documents are the appliance's own)."""

        async def to_openwebui(document_id: str, text: str, editor: Identity) -> None:
            kind, _, note_id = document_id.partition(":")
            token = token_for(editor.id)
            if kind != "note" or not note_id or token is None:
                return
            self.notes.submit(note_id, {"content": orjson.loads(text)}, token)

        return to_openwebui

    def observer(self, identities: Mapping[str, Identity],
                 channels_changed: Callable[[str], object]) -> Callable[[dict], None]:
        """Watches open-webui's pub/sub messages (the bridge's `observers`) for what
        announces a change of rights: a room entered or left for one of our sessions
        (channel membership), `access:updated` to a session, `channel:created` to a user.
        The user's cached answers are forgotten, so the next question asks open-webui; for
        `channel:created`, `channels_changed(user_id)` enters the user's sessions into the
        new channel."""

        def observe(message: dict) -> None:
            method = message.get("method")
            if method in ("enter_room", "leave_room"):
                sid = message.get("sid")
                identity = identities.get(sid) if isinstance(sid, str) else None
                if identity is not None:
                    self.forget_user(identity.id)
                return
            if method != "emit":
                return
            event, room = message.get("event"), message.get("room")
            if event == "access:updated" and isinstance(room, str):
                identity = identities.get(room)
                if identity is not None:
                    self.forget_user(identity.id)
            elif (event == "events:channel" and isinstance(room, str)
                  and room.startswith("user:") and _kind(message.get("data")) == "channel:created"):
                self.forget_user(room[len("user:"):])
                channels_changed(room[len("user:"):])

        return observe

    def forget_user(self, user_id: str) -> None:
        """open-webui announced a change for this user: ask it again next time."""
        self.identities.forget_user(user_id)
        self.rights.forget_user(user_id)
        self.ledger.forget_user(user_id)

    def background(self) -> list[tuple[str, Any]]:
        """(name, coroutine) of the work to run while the appliance runs."""
        work: list[tuple[str, Any]] = [("open-webui note writer", self.notes.run())]
        if self.pools is not None:
            work.append(("open-webui session pool", every(
                "open-webui session pool", REFRESH_INTERVAL, self.pools.refresh)))
        return work

    def figures(self) -> Iterator[Figure]:
        yield Figure("rt_openwebui_requests", "Requests sent to open-webui's API",
                     self.api.requests)
        yield Figure("rt_openwebui_cache_entries", "Answers of open-webui cached",
                     len(self.cache))
        yield Figure("rt_openwebui_notes_pending",
                     "Note contents waiting to be written to open-webui", len(self.notes.pending))
        yield Figure("rt_openwebui_notes_written", "Note contents written to open-webui",
                     self.notes.written)
        yield Figure("rt_openwebui_notes_failed",
                     "Note content writes that failed and were retried", self.notes.failed)
        yield Figure("rt_openwebui_read_markers_sent", "Read markers sent to open-webui",
                     self.markers.sent)
        yield Figure("rt_openwebui_note_echoes_stripped", "open-webui's echoes of note "
                     "contents we wrote, delivered without the content", self.echoes.stripped)

    async def close(self, deadline: float) -> None:
        await self.notes.flush(deadline)
        await self.markers.close()
        self.api.close()


def _kind(data: Any) -> Any:
    """The `data.type` of an emit's first argument (python-socketio sends a list)."""
    first = data[0] if isinstance(data, list) and data else data
    inner = first.get("data") if isinstance(first, dict) else None
    return inner.get("type") if isinstance(inner, dict) else None
