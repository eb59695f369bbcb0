"""The only place room names are built and parsed.

The names are part of the wire contract (protocol §3, §4): open-webui's backend emits to
`user:{id}` and `channel:{id}` rooms, the note editor joins `doc_{document_id}`.
"""
from __future__ import annotations

from collections.abc import Iterable


def user(user_id: str) -> str:
    return f"user:{user_id}"


def channel(channel_id: str) -> str:
    return f"channel:{channel_id}"


def note(note_id: str) -> str:
    return f"note:{note_id}"


def document(document_id: str) -> str:
    return f"doc_{document_id}"


def parse(room: str) -> tuple[str, str] | None:
    """(kind, id) for a room this module names, else None (a sid or a custom room)."""
    if room.startswith("doc_"):
        return "document", room[4:]
    kind, sep, ident = room.partition(":")
    if sep and ident and kind in ("user", "channel", "note", "chat"):
        return kind, ident
    return None


def chat(chat_id: str) -> str:
    """A shared chat's viewers (open-webui 0.12 `events:chat` join)."""
    return f"chat:{chat_id}"


def ids(kind: str, names: Iterable[str]) -> list[str]:
    """The ids of the rooms of one kind among `names` (e.g. the rooms of a session)."""
    return [parsed[1] for name in names
            if (parsed := parse(name)) is not None and parsed[0] == kind]
