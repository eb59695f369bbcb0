"""Rooms and the local delivery of an emit: encoded once, queued on every recipient without
a task each.

python-socketio's `AsyncManager.emit` creates one asyncio task per recipient and awaits them
all; for a 1000-member room that is 1000 tasks per message, most of the CPU of a fan-out.
Our engine's send never waits (it writes to the socket buffer or queues for the next
poll), so the packet, encoded once, is handed to each session in turn, in one task.

Rooms are indexed both ways. python-socketio finds a session's rooms (on every `rooms(sid)`
and at every disconnect) by scanning every room of the namespace, which is O(all rooms) per
call; here each session's rooms are kept with it. And the room of a session's own sid, which
python-socketio keeps as one two-way dict per connection, is implied by the connection.

Used as a mixin ahead of `socketio.AsyncManager` in both client managers (in memory and on
Redis, where the pub/sub layer calls this for the local part of every emit).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import socketio
from engineio import packet as eio_packet

from . import ControlHandler
from .sio_packets import encode_event

# rooms of a session kept as a tuple up to this many (membership is checked by scanning)
_FEW = 8


class FanoutMixin(socketio.AsyncManager):
    # node-to-node control messages (e.g. "cancel that chat stream"): on one node there is
    # nobody to tell; the Redis manager carries them on its pub/sub channel
    multi_node = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # sid → its named rooms, its sid room included: a tuple while there are few (a set
        # of three costs 216 bytes per connection, a tuple 64), a set beyond
        self._rooms_of: dict[str, tuple[Any, ...] | set[Any]] = {}

    def connected_sid(self, eio_sid: str, namespace: str) -> str | None:
        """The sid of Engine.IO session `eio_sid` in `namespace` if it is connected there
        (not connecting or disconnecting): `sid_from_eio_sid` and `is_connected` in one,
        as every inbound packet asks."""
        sessions = self.rooms.get(namespace, {}).get(None)
        sid: str | None = sessions._invm.get(eio_sid) if sessions is not None else None
        if sid is None or sid in self.pending_connect.get(namespace, ()) \
                or sid in self.pending_disconnect.get(namespace, ()):
            return None
        return sid

    # ---------------------------------------------------------------- rooms
    def basic_enter_room(self, sid: str, namespace: str, room: Any,
                         eio_sid: str | None = None) -> None:
        if room is None or room != sid:
            super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        elif sid not in self.rooms.get(namespace, {}).get(None, ()):
            raise ValueError("sid is not connected to requested namespace")
        if room is not None:
            mine = self._rooms_of.get(sid)
            if mine is None:
                self._rooms_of[sid] = (room,)
            elif isinstance(mine, set):
                mine.add(room)
            elif room not in mine:
                self._rooms_of[sid] = (*mine, room) if len(mine) < _FEW else {*mine, room}

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        if room is None or room != sid:
            super().basic_leave_room(sid, namespace, room)
        if room is not None:
            mine = self._rooms_of.get(sid)
            if isinstance(mine, set):
                mine.discard(room)
                if not mine:
                    del self._rooms_of[sid]
            elif mine is not None and room in mine:
                rest = tuple(r for r in mine if r != room)
                if rest:
                    self._rooms_of[sid] = rest
                else:
                    del self._rooms_of[sid]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        # python-socketio's own version scans (a copy of) every room of the namespace
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of.get(sid, ())):
            self.basic_leave_room(sid, namespace, room)
        self.basic_leave_room(sid, namespace, None)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        if sid not in self.rooms.get(namespace, {}).get(None, ()):
            return []
        return list(self._rooms_of.get(sid, ()))

    def in_room(self, sid: str, room: Any) -> bool:
        """Membership without building the list of `rooms(sid)` (checked on every typing
        event and document update)."""
        return room in self._rooms_of.get(sid, ())

    def has_room(self, namespace: str, room: Any) -> bool:
        """Whether `room` (a named room or a sid) has a member on this node."""
        rooms = self.rooms.get(namespace)
        return bool(rooms) and (room in rooms or room in rooms.get(None, ()))

    def get_participants(self, namespace: str, room: Any) -> Iterator[tuple[str, str]]:
        rooms = self.rooms.get(namespace, {})
        everyone = rooms.get(None)
        names = room if hasattr(room, "__len__") and not isinstance(room, str) else [room]
        participants: dict[str, str] = {}
        for name in names:
            members = rooms.get(name)
            if members is not None:
                participants.update(members._fwdm)
            elif everyone is not None and name in everyone:  # the room of a sid
                participants[name] = everyone[name]
        return iter(participants.items())  # (no generator: a frame fewer per recipient)

    def on_control(self, kind: str, handler: ControlHandler) -> None:
        self.__dict__.setdefault("_control_handlers", {})[kind] = handler

    async def publish_control(self, kind: str, payload: dict[str, Any]) -> None:
        return None

    def control_handler(self, kind: Any) -> ControlHandler | None:
        handlers: dict[str, ControlHandler] = self.__dict__.get("_control_handlers", {})
        return handlers.get(kind) if isinstance(kind, str) else None

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   ignore_queue: bool = False, **kwargs: Any) -> Any:
        # ignore_queue only matters to the pub/sub layer above, which has acted on it
        if callback is not None or kwargs:
            # acks need a packet id per recipient; anything unusual keeps the stock path
            return await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                                      callback=callback, to=to, **kwargs)
        room = to or room
        if namespace not in self.rooms:
            return
        if isinstance(data, tuple):
            data = list(data)  # several arguments
        elif data is not None:
            data = [data]
        else:
            data = []
        encoded = encode_event([event, *data], namespace)
        frames = [eio_packet.Packet(eio_packet.MESSAGE, part)
                  for part in (encoded if isinstance(encoded, list) else [encoded])]
        skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
        sessions = getattr(self.server.eio, "sessions", None)
        if sessions is not None:  # our engine: its send is synchronous and never waits
            for sid, eio_sid in self.get_participants(namespace, room):
                if sid not in skip:
                    session = sessions.get(eio_sid)
                    if session is not None:
                        for frame in frames:
                            session.send(frame)
            return
        send = self.server._send_eio_packet  # any other engine: one await per packet
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid not in skip:
                for frame in frames:
                    await send(eio_sid, frame)


class FanoutManager(FanoutMixin, socketio.AsyncManager):
    """The single-node client manager."""
