"""Rights from open-webui's API, asked with the tab's own token.

Answers are cached per user (`[openwebui] cache_ttl`, bounded by `cache_size`, a burst of
questions coalesced into one request) and forgotten when open-webui announces a change
(`forget_user`: `access:updated`, `channel:created`, membership emits).
"""
from __future__ import annotations

from typing import Any

from .. import payloads as p
from ..auth import Identity
from .api import NotFound, OpenWebuiApi, Refused, Unavailable
from .cache import TtlCache

FRESH_S = 2.0  # how old a channel list may be when the browser asks to (re)join


class OpenWebuiRights:
    def __init__(self, api: OpenWebuiApi, cache: TtlCache[tuple[str, ...], Any]):
        self.api = api
        self.cache = cache

    async def channels_of(self, identity: Identity, token: str | None,
                          fresh: bool = False) -> list[str]:
        """The user's channels; `fresh` (user-join, join-channels: the browser asks because
        it just loaded or was told of a change) takes an answer at most FRESH_S old. Nodes
        without a session of the user never hear open-webui's announcements, and
        open-webui enters only its own sockets into a new channel's room."""
        if not token:
            return []

        async def load() -> list[str]:
            try:
                found = await self.api.channels(token)
            except Refused:
                return []  # no channels permission (403): member of none, as open-webui
            return [c["id"] for c in found if isinstance(c.get("id"), str)]

        return await self._ask(("user", identity.id, "channels"), load,
                               FRESH_S if fresh else None)

    async def note_access(self, identity: Identity, token: str | None,
                          note_id: str) -> str | None:
        if not token:
            return None

        async def load() -> str | None:
            try:
                note = await self.api.note(token, note_id)
            except Refused:
                return None
            except NotFound:
                return "missing"
            return "write" if note.get("write_access") else "read"

        access = await self._ask(("user", identity.id, "note", note_id), load)
        if access == "missing":
            raise p.NotFound(f"note {note_id!r} does not exist")
        return access

    async def chat_access(self, identity: Identity, token: str | None,
                          chat_id: str) -> str | None:
        if not token:
            return None

        async def load() -> str | None:
            try:
                found = await self.api.chat(token, chat_id)
            except (Refused, NotFound):
                return None
            given = found.get("chat")
            chat = given if isinstance(given, dict) else {}
            # open-webui sets share_mode "continue" exactly when the caller may write
            return "write" if chat.get("share_mode") == "continue" else "read"

        return await self._ask(("user", identity.id, "chat", chat_id), load)

    async def may_encrypt(self, identity: Identity, token: str | None, channel_id: str) -> bool:
        """Whether this user may take part in the encrypted relay of a channel, by
        open-webui's rule (socket/encryption.py): channels and encrypted channels enabled,
        an admin or a user with both `features.channels` and `features.encrypted_channels`,
        a member of a DM or of a private group. Raises EventError `unavailable` when
        open-webui cannot answer."""
        if not token:
            return False

        async def features() -> dict:
            return await self.api.features(token)

        async def permissions() -> dict:
            user = await self.api.session_user(token)
            given = user.get("permissions")
            return given if isinstance(given, dict) else {}

        async def channel() -> dict | None:
            try:
                return await self.api.channel(token, channel_id)
            except (Refused, NotFound):
                return None  # not a member (403) or no such channel

        switches = await self._ask(("user", identity.id, "features"), features)
        if not (switches.get("enable_channels") and switches.get("enable_encrypted_channels")):
            return False
        if identity.role != "admin":
            granted = (await self._ask(("user", identity.id, "permissions"), permissions)
                       ).get("features", {})
            if not (granted.get("channels") and granted.get("encrypted_channels")):
                return False
        found = await self._ask(("user", identity.id, "channel", channel_id), channel)
        return bool(found) and (found.get("type") == "dm" or (
            found.get("type") == "group" and found.get("is_private") is True))

    def forget_user(self, user_id: str) -> None:
        self.cache.forget_where(lambda key, value: key[:2] == ("user", user_id))

    async def _ask(self, key: tuple, load, max_age: float | None = None):
        try:
            return await self.cache.get(key, load, max_age)
        except Unavailable:
            raise p.EventError("open-webui is unavailable, try again", "unavailable") from None
