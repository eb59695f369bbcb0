"""Fan-out and session control through python-socketio, for the API and the services.

Whatever the backend, `sio.emit`, `enter_room` and `disconnect` reach sessions on every
node (the Redis manager publishes what is not local), so this module works unchanged in
cluster mode; the sessions of a user come from the presence registry, which is cluster-wide
there.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from . import rooms
from .backends import PresenceRegistry
from .metrics import Figure


class CallTimeout(Exception):
    """The client did not acknowledge in time."""


class Emitter:
    def figures(self) -> Iterator[Figure]:
        yield Figure("rt_events_out", "Events emitted (once per emit, not per recipient)",
                     dict(self.counts), label="event", counter=True)

    def __init__(self, sio, presence: PresenceRegistry):
        self.sio = sio
        self.presence = presence
        self.counts: Counter[str] = Counter()  # emits by event name, for /metrics

    async def emit(self, event: str, data: Any, *, users: Iterable[str] = (),
                   rooms_: Iterable[str] = (), sids: Iterable[str] = (),
                   everyone: bool = False, skip_sids: Iterable[str] = ()) -> None:
        """One emit to the union of the targets: a session in several of them gets it once."""
        skip = list(skip_sids) or None
        self.counts[event] += 1
        if everyone:
            await self.sio.emit(event, data, skip_sid=skip)
            return
        targets = [rooms.user(u) for u in users] + list(rooms_) + list(sids)
        if targets:
            await self.sio.emit(event, data, to=targets, skip_sid=skip)

    async def to_room(self, event: str, data: Any, room: str, skip_sid: str | None = None) -> None:
        self.counts[event] += 1
        await self.sio.emit(event, data, to=room, skip_sid=skip_sid)

    async def sessions_of(self, user_ids: Iterable[str]) -> list[str]:
        sids: list[str] = []
        for user_id in user_ids:
            sids.extend(await self.presence.sessions_of(user_id))
        return sids

    async def enter(self, user_ids: Iterable[str], room: str) -> int:
        sids = await self.sessions_of(user_ids)
        for sid in sids:
            await self.sio.enter_room(sid, room)
        return len(sids)

    async def leave(self, user_ids: Iterable[str], *room_names: str) -> int:
        sids = await self.sessions_of(user_ids)
        for sid in sids:
            for room in room_names:
                await self.sio.leave_room(sid, room)
        return len(sids)

    async def close_room(self, room: str) -> None:
        await self.sio.close_room(room)

    async def disconnect_users(self, user_ids: Iterable[str]) -> int:
        sids = await self.sessions_of(user_ids)
        for sid in sids:
            await self.sio.disconnect(sid)
        return len(sids)

    async def call(self, sid: str, event: str, data: Any, timeout: float) -> Any:
        """Emit to one session and wait for its ack (on any node: the Redis manager routes
        the ack back). Not `sio.call`, which refuses to run with async_handlers off: that
        guard protects handlers calling their own client, and the API is not a handler."""
        answered = asyncio.Event()
        answer: list[tuple] = []

        def on_ack(*args: Any) -> None:
            answer.append(args)
            answered.set()

        await self.sio.emit(event, data, to=sid, callback=on_ack)
        try:
            await asyncio.wait_for(answered.wait(), timeout)
        except TimeoutError:
            raise CallTimeout(f"no answer from {sid} within {timeout:g} s") from None
        args = answer[0]
        return args[0] if len(args) == 1 else (list(args) if args else None)
