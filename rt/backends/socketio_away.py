"""The open-webui bridge's part in connection state recovery (socketio_bridge.py): sessions
of this node that are away (lost their connection, may still recover), and which node
records open-webui's emits for a session that recovers.

open-webui publishes an emit only where somebody listens (with room channels, on the
room's own channel). A tab that is away has left its rooms on its node, so without more
nobody would hear what open-webui sends it meanwhile, and its recovery would look complete
without it. So its node keeps its rooms (its sid room included) subscribed (`hold`) until
it recovers or its window passes, and records what comes for it.

One node records for a session at any time. When it recovers, on this node or another,
the recovering node publishes an owner message on the session's own channel (`claim`; the
main channel without room channels). Every node reads its channels in the order Redis
delivered them, so the holder records exactly up to that message and the recovering node
from it on: every emit once. The holder answers with a `held` message; without it (the
holder died, or stopped after its drain, or the session's node died without a goodbye and
nobody held it) emits may have gone unheard, and the recovery fails cleanly (`claim`
returns False): never a replay with a hole presented as complete.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import orjson

from .socketio_protocol import HELD_METHOD, OWNER_METHOD, Malformed
from .socketio_rooms import RoomChannels

Publish = Callable[[bytes, "str | None"], Awaitable[bool]]


class Recorder(Protocol):
    """What the bridge needs of connection state recovery (rt/recovery/service.py)."""

    def owns(self, sid: str) -> bool: ...
    async def record_foreign(self, event: str, args: list[Any], sids: list[str]) -> bool: ...
    async def record_foreign_soon(self, event: str, args: list[Any], sids: list[str],
                                  fallback: Callable[[], Awaitable[None]]) -> None: ...
    async def park_foreign_call(self, sid: str, event: str, args: list[Any],
                                origin: list[Any]) -> None: ...
    async def keep_foreign_call(self, sid: str, event: str, args: list[Any],
                                origin: list[Any]) -> bool: ...
    def pubsub_gap(self) -> None: ...
    async def ended(self, sid: str) -> None: ...


class ForeignAnswer:
    """The callback of a foreign call delivered to a local session: the browser's answer
    goes back to the caller (`answer`: the bridge's). `origin` is what another node needs
    to answer it (the call may be asked again there after the session recovered)."""

    __slots__ = ("answer", "origin")

    def __init__(self, answer: Callable[..., Awaitable[None]], host_id: str, sid: str,
                 namespace: str, callback_id: int) -> None:
        self.answer = answer
        self.origin: list[Any] = [host_id, sid, namespace, callback_id]

    async def __call__(self, *args: Any) -> None:
        await self.answer(*self.origin, *args)


class _Claim:
    __slots__ = ("echo", "held", "wait_held", "early")

    def __init__(self, wait_held: bool) -> None:
        loop = asyncio.get_running_loop()
        self.echo: asyncio.Future[None] = loop.create_future()  # our owner message back
        self.held: asyncio.Future[None] = loop.create_future()  # the holder's answer
        self.wait_held = wait_held  # False when held here: nobody else has to answer
        # emits after our owner message, before the holder's answer: recorded once the
        # holder has recorded everything before it (its answer), so the log keeps their
        # order even when the holder reads its messages later than we do
        self.early: list[tuple[str, list[Any]]] = []

    @property
    def ours(self) -> bool:
        return self.echo.done()

    @property
    def settled(self) -> bool:
        return self.echo.done() and (self.held.done() or not self.wait_held)


class AwaySessions:
    def __init__(self, rooms: RoomChannels, publish: Publish, host_id: str, *,
                 room_channels: bool, timeout: float) -> None:
        self.rooms = rooms
        self.publish = publish
        self.host_id = host_id
        self.room_channels = room_channels
        self.timeout = timeout
        self.held: dict[str, tuple[list[str], float]] = {}  # sid → its rooms, until when
        self._in: dict[str, set[str]] = {}  # room → away sids held here
        self._claims: dict[str, _Claim] = {}  # sids recovering here
        self._none_held = asyncio.Event()
        self._none_held.set()
        # connection state recovery, when on (set by it): records what is sent to this
        # node's recoverable sessions and to those held here
        self.recorder: Recorder | None = None

    # ------------------------------------------------------------------ holding
    def hold(self, sid: str, rooms: list[str], until: float) -> None:
        """`sid` lost its connection and may recover until `until`: its rooms stay
        subscribed and what is sent to it is recorded here until a claim."""
        self.release(sid)
        rooms = sorted(set(rooms) | {sid})
        self.held[sid] = (rooms, until)
        self._none_held.clear()
        for room in rooms:
            self._in.setdefault(room, set()).add(sid)
        if self.room_channels:
            self.rooms.hold("/", rooms, True)

    def release(self, sid: str) -> None:
        held = self.held.pop(sid, None)
        if held is None:
            return
        if not self.held:
            self._none_held.set()
        for room in held[0]:
            sids = self._in.get(room)
            if sids is not None:
                sids.discard(sid)
                if not sids:
                    del self._in[room]
        if self.room_channels:
            self.rooms.hold("/", held[0], False)

    def expire(self, now: float) -> None:
        for sid in [sid for sid, (_, until) in self.held.items() if until <= now]:
            self.release(sid)

    def targets(self, room: str | list[str] | None, skip: set[str]) -> list[str]:
        """The away sessions held here that an emit to `room` is meant for."""
        if not self.held:
            return []
        if room is None:
            found: set[str] = set(self.held)
        else:
            found = set()
            for name in [room] if isinstance(room, str) else room:
                found |= self._in.get(name, set())
        return sorted(found - skip)

    async def none_held(self, timeout: float) -> bool:
        """Wait (at most `timeout`) until no session is held here any more."""
        try:
            await asyncio.wait_for(self._none_held.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def split(self, recorder: Recorder, participants: Iterable[tuple[str, str]],
              skipped: set[str], event: str, args: list[Any]) -> tuple[list[str], list[str]]:
        """Of an emit's local recipients: those it is recorded for here now, and those it
        is not delivered to as before: recovering here, their claim not back (the node
        that held them records it) or not answered yet (recorded at the answer)."""
        recorded: list[str] = []
        waiting: list[str] = []
        for sid, _ in participants:
            if sid in skipped:
                continue
            claim = self._claims.get(sid)
            if claim is not None and not claim.settled:
                waiting.append(sid)
                if claim.ours:
                    claim.early.append((event, args))
            elif recorder.owns(sid):
                recorded.append(sid)
        return recorded, waiting

    async def _record_early(self, sid: str, claim: _Claim) -> None:
        while claim.early and self.recorder is not None:
            event, args = claim.early.pop(0)
            await self.recorder.record_foreign(event, args, [sid])

    async def keep_call(self, recorder: Recorder, sids: list[str], elsewhere: str | None,
                        event: str, args: list[Any], origin: list[Any]) -> Counter[str]:
        """A call of open-webui's to sessions away from this node (kept, asked where they
        recover), or to `elsewhere`, a session connected to no node here (kept when it
        is recoverable: its node may have died). Returns the counts for the stats."""
        counts: Counter[str] = Counter()
        for sid in sids:
            await recorder.park_foreign_call(sid, event, args, origin)
            counts["calls_parked"] += 1
        if elsewhere is not None and await recorder.keep_foreign_call(
                elsewhere, event, args, origin):
            counts["calls_kept_elsewhere"] += 1
        return counts

    # ------------------------------------------------------------------ claiming
    def claiming(self, sid: str) -> bool:
        """Recovering here, claim not back yet: the holder still records for it."""
        return sid in self._claims

    def begin_claim(self, sid: str) -> None:
        if sid not in self._claims:
            self._claims[sid] = _Claim(wait_held=sid not in self.held)

    def end_claim(self, sid: str) -> None:
        self._claims.pop(sid, None)

    async def claim(self, sid: str, holder: bool = True) -> bool:
        """Make this node the one that records for `sid` (its rooms are entered here).
        True once our owner message came back and the node that held `sid` answered it
        (or we held it, or `holder` is False: nobody is expected to); False after
        `timeout`: what open-webui sent it while it was away may be lost."""
        self.begin_claim(sid)
        claim = self._claims[sid]
        if not holder:
            claim.wait_held = False
        try:
            await self.rooms.settled()
            channel = self.rooms.room_channel("/", sid) if self.room_channels else None
            message = orjson.dumps({"method": OWNER_METHOD, "sid": sid,
                                    "host_id": self.host_id})
            if not await self.publish(message, channel):
                return False
            waits = [claim.echo, claim.held] if claim.wait_held else [claim.echo]
            await asyncio.wait_for(asyncio.gather(*map(asyncio.shield, waits)), self.timeout)
            return True
        except TimeoutError:
            return False
        finally:
            await self._record_early(sid, claim)  # a claim not answered: all the same
            self._claims.pop(sid, None)

    async def on_owner(self, data: dict[str, Any]) -> None:
        """An owner message (ours come back to us too)."""
        sid, host = data.get("sid"), data.get("host_id")
        if not isinstance(sid, str) or not isinstance(host, str):
            raise Malformed("owner needs sid and host_id")
        if host == self.host_id:
            claim = self._claims.get(sid)
            if claim is not None and not claim.echo.done():
                claim.echo.set_result(None)
            self.release(sid)  # held here: a live session of this node from now on
            return
        if sid in self.held:
            self.release(sid)  # recorded here up to this message, there from it on
            channel = self.rooms.room_channel("/", sid) if self.room_channels else None
            await self.publish(orjson.dumps({"method": HELD_METHOD, "sid": sid,
                                             "host_id": self.host_id, "to": host}), channel)

    async def on_held(self, data: dict[str, Any]) -> None:
        sid, to = data.get("sid"), data.get("to")
        if not isinstance(sid, str) or not isinstance(to, str):
            raise Malformed("held needs sid and to")
        claim = self._claims.get(sid)
        if to == self.host_id and claim is not None and not claim.held.done():
            await self._record_early(sid, claim)  # before anything after the answer
            claim.held.set_result(None)
