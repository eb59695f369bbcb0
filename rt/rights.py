"""What an identity may join, read and write: channels, notes, chats.

The gateway and the document service ask one `Rights` object, chosen once in the
composition root:
- `DirectoryRights` (here): the appliance's directory (channels and notes registered
  through the HTTP API). It knows no chats: shared-chat events are refused there.
- `openwebui.rights.OpenWebuiRights`: open-webui's API with the tab's own token.

Note access is "write", "read" or None; a chat's too ("write" = may type and continue it).
"""
from __future__ import annotations

from typing import Protocol

from . import payloads as p
from .auth import Identity
from .backends import Store
from .directory import can_read, can_write


class Rights(Protocol):
    async def channels_of(self, identity: Identity, token: str | None,
                          fresh: bool = False) -> list[str]: ...

    async def note_access(self, identity: Identity, token: str | None,
                          note_id: str) -> str | None: ...

    async def chat_access(self, identity: Identity, token: str | None,
                          chat_id: str) -> str | None: ...

    def forget_user(self, user_id: str) -> None: ...


class DirectoryRights:
    def __init__(self, store: Store):
        self.store = store

    async def channels_of(self, identity: Identity, token: str | None,
                          fresh: bool = False) -> list[str]:
        return list(await self.store.channels_of_user(identity.id))

    async def note_access(self, identity: Identity, token: str | None,
                          note_id: str) -> str | None:
        note = await self.store.get_note(note_id)
        if note is None:
            raise p.NotFound(f"note {note_id!r} does not exist")
        if can_write(note, identity.id, identity.is_admin):
            return "write"
        return "read" if can_read(note, identity.id, identity.is_admin) else None

    async def chat_access(self, identity: Identity, token: str | None,
                          chat_id: str) -> str | None:
        return None  # the directory has no chats; shared chats need open-webui

    def forget_user(self, user_id: str) -> None:
        pass  # nothing cached: the store is asked every time
