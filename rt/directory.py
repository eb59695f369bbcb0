"""The directory (users, channels, notes) and what its changes do to live sessions.

Backends call this through the HTTP API. A change takes effect at once: added channel
members' sessions enter the channel room, removed ones leave it, a disabled or deleted user
is disconnected, a user who loses read access to a note leaves its rooms.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from . import rooms
from .backends import Note, Store, User
from .emitter import Emitter

ROLES = ("user", "admin", "pending")


def note_document_id(note_id: str) -> str:
    return f"note:{note_id}"


def can_read(note: Note, user_id: str, is_admin: bool) -> bool:
    return is_admin or user_id == note.owner or user_id in note.read or user_id in note.write


def can_write(note: Note, user_id: str, is_admin: bool) -> bool:
    return is_admin or user_id == note.owner or user_id in note.write


class Directory:
    def __init__(self, store: Store, emitter: Emitter):
        self.store = store
        self.emitter = emitter
        # services that keep per-note state (documents): called with the new note, or None
        # when it was deleted
        self.note_hooks: list[Callable[[str, Note | None], Awaitable[None]]] = []

    # users -----------------------------------------------------------------------
    async def put_user(self, user: User) -> None:
        await self.store.put_user(user)
        if user.disabled or user.role == "pending":
            # revocation: clients reconnect and are refused at connect
            await self.emitter.disconnect_users([user.id])

    async def delete_user(self, user_id: str) -> bool:
        found = await self.store.delete_user(user_id)
        await self.emitter.disconnect_users([user_id])
        return found

    # channels ----------------------------------------------------------------------
    async def put_channel(self, channel_id: str, members: list[str]) -> None:
        before = set(await self.store.get_channel_members(channel_id) or ())
        await self.store.put_channel(channel_id, members)
        await self._apply_membership(channel_id, set(members) - before, before - set(members))

    async def update_members(self, channel_id: str, add: list[str], remove: list[str]) -> bool:
        before = await self.store.get_channel_members(channel_id)
        if before is None:
            return False
        await self.store.update_channel_members(channel_id, add, remove)
        after = set(await self.store.get_channel_members(channel_id) or ())
        await self._apply_membership(channel_id, after - set(before), set(before) - after)
        return True

    async def delete_channel(self, channel_id: str) -> bool:
        found = await self.store.delete_channel(channel_id)
        if found:
            await self.emitter.close_room(rooms.channel(channel_id))
        return found

    async def _apply_membership(self, channel_id: str, added: set[str], removed: set[str]) -> None:
        room = rooms.channel(channel_id)
        if added:
            await self.emitter.enter(sorted(added), room)
        if removed:
            await self.emitter.leave(sorted(removed), room)

    # notes -------------------------------------------------------------------------
    async def put_note(self, note: Note) -> None:
        before = await self.store.get_note(note.id)
        await self.store.put_note(note)
        for hook in self.note_hooks:
            await hook(note.id, note)
        if before is None:
            return
        lost = [
            uid for uid in ({before.owner} | before.read | before.write)
            if not can_read(note, uid, False)
        ]
        if lost:
            # an admin keeps access through the role, so only non-admins are removed
            lost = [uid for uid in lost if not await self._is_admin(uid)]
            await self._leave_note(note.id, lost)

    async def delete_note(self, note_id: str) -> bool:
        found = await self.store.delete_note(note_id)
        if found:
            await self.emitter.close_room(rooms.note(note_id))
            await self.emitter.close_room(rooms.document(note_document_id(note_id)))
            for hook in self.note_hooks:
                await hook(note_id, None)
        return found

    async def _leave_note(self, note_id: str, user_ids: list[str]) -> None:
        await self.emitter.leave(
            user_ids, rooms.note(note_id), rooms.document(note_document_id(note_id)))

    async def _is_admin(self, user_id: str) -> bool:
        user = await self.store.get_user(user_id)
        return user is not None and user.role == "admin"
