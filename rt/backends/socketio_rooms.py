"""The open-webui bridge's subscriptions (socketio_bridge.py): its main channel and, with room
channels, `<channel>#<namespace>#<room>` for exactly the rooms (and sids) that have a
member on this node, as open-webui 0.12's room-channel manager does.

The client manager reports every room whose local membership may have changed
(`changed`); `sync` runs beside the bridge's reader on the pub/sub connection, SUBSCRIBEs
or UNSUBSCRIBEs, then sends a numbered PING. The reader hands the PONG back (`confirm`)
once Redis has applied everything before it, and `settled()` waits for that, so a room
entry returns only when an emit published after it cannot be missed.

Rooms can also be held without a local member (`hold`): those of sessions that lost their
connection and may still recover (rt/recovery), so that what open-webui sends them
meanwhile is heard and kept for their recovery.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..core.tasks import cancel_swallowed

if TYPE_CHECKING:
    from .redis_manager import RedisClientManager

log = logging.getLogger("rt.backend")

SUBSCRIBE_CHUNK = 500  # channels per SUBSCRIBE/UNSUBSCRIBE command
SYNC_PING = b"rt-bridge-sync:"  # + sequence number: the barrier after (un)subscribing


class RoomChannels:
    """What is subscribed on the live connection, what changed since, and the barrier's
    sequence numbers (requested by room changes, confirmed by the PONG that follows the
    (un)subscriptions they caused)."""

    def __init__(self, manager: RedisClientManager, channel: str, *, per_room: bool,
                 timeout: float, stats: collections.Counter[str],
                 on_ready: Callable[[], None], on_wait_timeout: Callable[[], None]) -> None:
        self.manager = manager
        self.channel = channel
        self.per_room = per_room
        self.timeout = timeout
        # called when the first sync of a new connection is confirmed: the bridge listens
        self._on_ready = on_ready
        self._on_wait_timeout = on_wait_timeout
        self.connected = False  # a connection is up and its first sync confirmed
        self.subscribed: set[str] = set()
        # channels held for sessions that are away (see `hold`): how many hold each
        self.held: collections.Counter[str] = collections.Counter()
        self._dirty: set[tuple[str, str]] = set()
        self._changed = asyncio.Event()
        self._full_sync = True
        self._requested = 0
        self._confirmed = 0
        self._ready_at = 0  # the sequence number whose PONG makes a new connection ready
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = \
            collections.deque()
        # the bridge's counters: channels_subscribed, channels_unsubscribed,
        # subscribe_wait_timeouts
        self.stats = stats

    def room_channel(self, namespace: str, room: str) -> str:
        # open-webui's layout; unambiguous while namespaces hold no '#' (ours is '/')
        return f"{self.channel}#{namespace}#{room}"

    def changed(self, namespace: Any, room: Any) -> None:
        """The local membership of `room` (a named room or a sid) may have changed; cheap,
        synchronous, never fails."""
        if isinstance(room, str) and isinstance(namespace, str):
            self._dirty.add((namespace, room))
            self._requested += 1
            self._changed.set()

    def hold(self, namespace: str, rooms: list[str], held: bool) -> None:
        """Keep (or stop keeping) the channels of `rooms` subscribed without a local
        member: a session that is away still needs what is published to its rooms."""
        for room in rooms:
            channel = self.room_channel(namespace, room)
            if held:
                self.held[channel] += 1
            else:
                self.held[channel] -= 1
                if self.held[channel] <= 0:
                    del self.held[channel]
            self.changed(namespace, room)

    async def settled(self) -> None:
        """Return once every room change reported so far is in effect in Redis (subscribed
        or unsubscribed), so nothing published from now on for those rooms is missed.
        Returns at once while not connected (the reconnect subscribes everything), and
        after `timeout` at most."""
        if not self.connected or self._confirmed >= self._requested:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._requested, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            self.stats["subscribe_wait_timeouts"] += 1
            self._on_wait_timeout()

    def confirm(self, seq: int) -> None:
        """The PONG of the barrier numbered `seq` came back."""
        if seq > self._confirmed:
            self._confirmed = seq
        waiters = self._waiters
        while waiters and waiters[0][0] <= seq:
            _, future = waiters.popleft()
            if not future.done():
                future.set_result(None)
        if not self.connected and seq >= self._ready_at:
            self.connected = True
            self._on_ready()

    def connecting(self) -> None:
        """A new connection, subscribed to the main channel only: the next sync brings
        everything else this node needs."""
        self.subscribed = {self.channel}
        self._full_sync = True
        self._changed.set()

    def lost(self) -> None:
        """The connection is gone: nothing is subscribed, nobody waits for it."""
        self.connected = False
        self.subscribed = set()
        self.release_waiters()

    def release_waiters(self) -> None:
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)

    def _all_local_rooms(self) -> set[str]:
        channels: set[str] = set()
        for namespace, rooms in list(self.manager.rooms.items()):
            for room in list(rooms):
                if room is None:
                    channels.update(self.room_channel(namespace, sid)
                                    for sid in list(rooms[None]) if isinstance(sid, str))
                elif isinstance(room, str):
                    channels.add(self.room_channel(namespace, room))
        return channels | set(self.held)

    async def sync(self, pubsub: Any) -> None:
        """Bring the subscriptions in line with the local rooms, then PING with the
        sequence number of the last change covered; runs until the connection fails."""
        while True:
            # redis-py's sends may swallow a cancel (see tasks.py): look before waiting
            if cancel_swallowed():
                raise asyncio.CancelledError
            await self._changed.wait()
            self._changed.clear()
            seq = self._requested
            add: set[str] = set()
            remove: set[str] = set()
            if self._full_sync:  # a new connection: everything this node needs
                self._full_sync = False
                self._dirty.clear()
                self._ready_at = seq
                wanted = {self.channel} | (self._all_local_rooms() if self.per_room else set())
                add = wanted - self.subscribed
            else:
                dirty, self._dirty = self._dirty, set()
                for namespace, room in dirty:
                    channel = self.room_channel(namespace, room)
                    if self.manager.has_room(namespace, room) or channel in self.held:
                        if channel not in self.subscribed:
                            add.add(channel)
                    elif channel in self.subscribed:
                        remove.add(channel)
            self.subscribed |= add
            self.subscribed -= remove
            self.stats["channels_subscribed"] += len(add)
            self.stats["channels_unsubscribed"] += len(remove)
            for chunk in _chunks(add):
                await pubsub.subscribe(*chunk)
            for chunk in _chunks(remove):
                await pubsub.unsubscribe(*chunk)
            await pubsub.ping(SYNC_PING + str(seq).encode())


def _chunks(channels: set[str]) -> Iterator[list[str]]:
    items = sorted(channels)
    for i in range(0, len(items), SUBSCRIBE_CHUNK):
        yield items[i:i + SUBSCRIBE_CHUNK]
