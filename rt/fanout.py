"""Local delivery of an emit: encoded once, queued on every recipient without a task each.

python-socketio's `AsyncManager.emit` creates one asyncio task per recipient and awaits them
all; for a 1000-member room that is 1000 tasks per message, most of the CPU of a fan-out.
Our engine's send never waits (it writes to the socket buffer or queues for the next
poll), so the packet, encoded once, is handed to each session in turn, in one task.

Used as a mixin ahead of `socketio.AsyncManager` in both client managers (in memory and on
Redis, where the pub/sub layer calls this for the local part of every emit).
"""
from __future__ import annotations

import socketio
from engineio import packet as eio_packet
from socketio import packet


class FanoutMixin(socketio.AsyncManager):
    # node-to-node control messages (e.g. "cancel that chat stream"): on one node there is
    # nobody to tell; the Redis manager carries them on its pub/sub channel
    multi_node = False

    def on_control(self, kind: str, handler) -> None:
        self.__dict__.setdefault("_control_handlers", {})[kind] = handler

    async def publish_control(self, kind: str, payload: dict) -> None:
        return None

    def control_handler(self, kind: str):
        return self.__dict__.get("_control_handlers", {}).get(kind)

    async def emit(self, event, data, namespace, room=None, skip_sid=None, callback=None,
                   to=None, ignore_queue=False, **kwargs):
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
        encoded = self.server.packet_class(
            packet.EVENT, namespace=namespace, data=[event] + data).encode()
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
