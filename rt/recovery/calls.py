"""Calls (events with an ack: a tool's confirmation or input dialog, open-webui's `sio.call`
or the API's `/api/v1/call`) to recoverable sessions: kept until answered, asked again
where the session recovers, and the answer routed back to whoever waits for it.

Why: socket.io-client 4.8 sends an ack on whatever connection it has at the moment the
user answers (`Socket.ack` → `Manager._packet` → `engine.write`), and drops it when that
connection is closed (`_sendPacket` returns on "closing"/"closed"); acks are never
buffered and never replayed. So a dialog shown before a drop and answered while
disconnected is lost, and one answered after the recovery arrives on the new connection
(another node, perhaps) with the old ack id. Hence:

- every call sent to a recoverable session is kept (`sent`) with the ack id it went out
  with, the packet's data, and who waits for the answer (`origin`); the answer removes it;
- a call made for a session that is away (open-webui's, heard by the node that holds the
  session) or whose node may have died (the API's, made on another node) is kept unsent;
- where the session recovers, every call still kept is asked again (`ask`), with its old
  ack id when it had one: an answer to the dialog still shown and the answer to the new
  one are the same answer, the first one counts. open-webui's frontend shows one modal
  per kind and replaces its callback, so the user sees the same dialog, once;
- the answer goes to its origin: open-webui's caller through its pub/sub (any node's
  bridge), a call of an appliance node through the cluster channel to that node
  (`recovery:answer`), or the local caller.

A caller that went away (its node died, its timeout passed) gets nothing: python-socketio
drops an answer nobody waits for.
"""
from __future__ import annotations

import base64
import functools
import inspect
import itertools
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from ..backends.recovery_state import RecoveryState
from ..backends.sio_packets import encode_event
from ..core.errors import StoreError
from ..core.tasks import TaskGroup

if TYPE_CHECKING:
    from ..sio import SocketServer

log = logging.getLogger("rt.recovery")

CALLER_TTL = 600.0  # seconds a local caller is remembered (open-webui's longest call: 240)
ForeignAnswer = Callable[..., Awaitable[None]]  # (host_id, sid, namespace, id, *args)


class PendingCalls:
    def __init__(self, sio: SocketServer, state: RecoveryState, node_id: str, *,
                 ttl: float, tasks: TaskGroup) -> None:
        self.sio = sio
        self.state = state
        self.node_id = node_id
        self.ttl = ttl  # how long a kept call lives in the state
        self.tasks = tasks
        # answers open-webui's calls through its pub/sub (the bridge's, when there is one)
        self.answer_foreign: ForeignAnswer | None = None
        # key → (the local caller's callback, when to forget it): calls of this node whose
        # answer may come back from another node, or after python-socketio forgot them
        self.callers: dict[str, tuple[Callable[..., Any], float]] = {}
        self.asked = 0  # calls asked again after a recovery

    # ------------------------------------------------------------------ keeping
    def origin_of(self, sid: str, wire_id: int, callback: Any) -> tuple[list[Any], str]:
        """Who waits for the answer of the call sent to `sid` as `wire_id`, and the call's
        key (the same on every node that sees the call)."""
        manager = self.sio.manager
        foreign = getattr(callback, "origin", None)  # the bridge's ForeignAnswer
        if isinstance(foreign, list) and len(foreign) == 4:
            return ["ow", *foreign], f"ow:{foreign[0]}:{foreign[3]}"
        if isinstance(callback, functools.partial) and len(callback.args) == 4 \
                and getattr(callback.func, "__name__", "") == "_return_callback":
            # python-socketio's pub/sub: the call of an appliance node (host id, sid, ns, id)
            host, target, namespace, callback_id = callback.args
            key = f"rt:{host}:{callback_id}"
            if host == getattr(manager, "host_id", None):
                # this node's own call: python-socketio forgets it when the session's
                # connection ends here, so it is remembered for an answer that comes later
                own = manager.callbacks.get(target, {}).get(callback_id)
                if own is not None:
                    self.callers[key] = (own, time.monotonic() + CALLER_TTL)
            return ["rt", host, target, namespace, callback_id], key
        key = f"n:{self.node_id}:{sid}:{wire_id}:{uuid.uuid4().hex[:8]}"
        self.callers[key] = (callback, time.monotonic() + CALLER_TTL)
        return ["n", self.node_id], key

    async def sent(self, sid: str, pkt: Any) -> None:
        """A call goes out to `sid` (recoverable, connected here) as `pkt`: kept until
        answered."""
        manager = self.sio.manager
        callbacks = manager.callbacks.get(sid)
        callback = callbacks.get(pkt.id) if callbacks is not None else None
        if callback is None:
            return
        origin, key = self.origin_of(sid, pkt.id, callback)
        value = _entry(key, pkt.id, pkt.data, origin)
        if value is None:
            return
        callbacks[pkt.id] = self._answered(sid, key, callback)
        try:
            await self.state.add_call(sid, key, value, self.ttl)
        except StoreError as exc:
            log.warning("call to %s not kept for recovery: %s", sid, exc)

    async def made_for(self, sid: str, event: str, args: list[Any],
                       origin: list[Any]) -> None:
        """A call of open-webui's for a session that is away (`origin`: its host id, sid,
        namespace, id): kept unsent, asked where the session recovers."""
        key = f"ow:{origin[0]}:{origin[3]}"
        value = _entry(key, None, [event, *args], ["ow", *origin])
        if value is None:
            return
        try:
            await self.state.add_call(sid, key, value, self.ttl, only_new=True)
        except StoreError as exc:
            log.warning("call for %s (away) not kept: %s", sid, exc)

    async def guard(self, sid: str, event: str, args: list[Any], callback: Any) -> None:
        """This node's call to `sid`, connected on another node that may have died: kept
        unsent (unless that node kept it as sent), so that it is asked where the session
        recovers. Runs once the emit registered its ack id."""
        manager = self.sio.manager
        callbacks = manager.callbacks.get(sid, {})
        callback_id = next((i for i, cb in callbacks.items() if i != 0 and cb is callback),
                           None)
        if callback_id is None:
            return  # answered already
        host = manager.host_id
        key = f"rt:{host}:{callback_id}"
        value = _entry(key, None, [event, *args], ["rt", host, sid, "/", callback_id])
        if value is None:
            return
        callbacks[callback_id] = self._answered(sid, key, callback)
        try:
            await self.state.add_call(sid, key, value, self.ttl, only_new=True)
            if callback_id not in manager.callbacks.get(sid, {}):
                await self.state.drop_call(sid, key)  # answered meanwhile
        except StoreError as exc:
            log.warning("call to %s not kept for recovery: %s", sid, exc)

    def adopt(self, sid: str) -> dict[Any, Any]:
        """`sid` recovers here: calls this node made to it while it was connected to
        another node are registered under ack ids of their own (python-socketio keeps
        them with the session's, in one dict): they move to `callers`, so that the ids of
        the session's calls on this connection, and those asked again, meet no other
        call. Returns the session's fresh dict of ack ids."""
        manager = self.sio.manager
        host = getattr(manager, "host_id", None)
        now = time.monotonic()
        for callback_id, callback in manager.callbacks.pop(sid, {}).items():
            if callback_id != 0:
                self.callers[f"rt:{host}:{callback_id}"] = (callback, now + CALLER_TTL)
        # ids of calls made from now on start far from those of the old connection: a
        # late answer to a call it had shown cannot complete another call
        fresh: dict[Any, Any] = {0: itertools.count(secrets.randbelow(1 << 30) + (1 << 20))}
        manager.callbacks[sid] = fresh
        return fresh

    def _answered(self, sid: str, key: str, callback: Callable[..., Any]
                  ) -> Callable[..., Awaitable[None]]:
        async def answered(*args: Any) -> None:
            self.callers.pop(key, None)
            self._drop(sid, key)
            await _call(callback, args)
        return answered

    def _drop(self, sid: str, key: str) -> None:
        async def drop() -> None:
            try:
                await self.state.drop_call(sid, key)
            except StoreError as exc:
                log.warning("answered call of %s not removed: %s", sid, exc)
        self.tasks.spawn(f"answered call {sid}", drop())

    # ------------------------------------------------------------------ asking again
    async def ask(self, sid: str, eio_sid: str) -> int:
        """The session recovered here: every call kept for it is asked again, on this
        connection, and its answer routed to its caller. Returns how many."""
        try:
            raw = await self.state.calls(sid)
        except StoreError as exc:
            log.warning("calls of %s not read: %s", sid, exc)
            return 0
        entries = []
        for item in raw:
            try:
                entry = orjson.loads(item)
                entries.append((entry["k"], entry.get("w"), _data(entry), entry["o"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        if not entries:
            return 0
        manager = self.sio.manager
        callbacks = manager.callbacks.setdefault(sid, {0: itertools.count(1)})
        old = [w for _, w, _, _ in entries if type(w) is int]
        if old:  # new ack ids above the old ones asked again, and those given out so far
            callbacks[0] = itertools.count(max(*old, next(callbacks[0])) + 1)
        session = self.sio.engine.sessions.get(eio_sid)
        for key, wire_id, data, origin in entries:
            if type(wire_id) is not int:
                wire_id = next(callbacks[0])
                value = _entry(key, wire_id, data, origin)
                if value is not None:
                    try:
                        await self.state.add_call(sid, key, value, self.ttl)
                    except StoreError:
                        pass  # asked now all the same
            callbacks[wire_id] = self._router(sid, key, origin)
            encoded = encode_event(data, id=wire_id)
            if session is not None:
                for part in encoded if isinstance(encoded, list) else [encoded]:
                    session.send(eio_packet.Packet(eio_packet.MESSAGE, part))
        self.asked += len(entries)
        log.info("session %s: %d unanswered call(s) asked again", sid, len(entries))
        return len(entries)

    def _router(self, sid: str, key: str, origin: list[Any]
                ) -> Callable[..., Awaitable[None]]:
        async def answered(*args: Any) -> None:
            self._drop(sid, key)
            await self.route(key, origin, list(args))
        return answered

    async def route(self, key: str, origin: list[Any], args: list[Any]) -> None:
        """The answer of a call asked again goes to whoever waits for it."""
        manager = self.sio.manager
        kind = origin[0] if origin else None
        if kind == "ow" and len(origin) == 5:
            if self.answer_foreign is not None:
                await self.answer_foreign(*origin[1:], *args)
        elif kind == "rt" and len(origin) == 5:
            host, target, _, callback_id = origin[1:]
            if host == getattr(manager, "host_id", None):
                await self.answer_here(key, target, callback_id, args)
            else:
                await manager.publish_control("recovery:answer", {
                    "h": host, "s": target, "i": callback_id, "k": key, "a": args})
        elif kind == "n" and len(origin) == 2:
            if origin[1] == self.node_id:
                await self.answer_here(key, None, None, args)
            else:
                await manager.publish_control("recovery:answer", {
                    "n": origin[1], "k": key, "a": args})

    async def on_answer(self, payload: dict[str, Any]) -> None:
        """`recovery:answer` from the node where the session answered."""
        key, args = payload.get("k"), payload.get("a")
        if not isinstance(key, str) or not isinstance(args, list):
            return
        if payload.get("h") == getattr(self.sio.manager, "host_id", None):
            target, callback_id = payload.get("s"), payload.get("i")
            if isinstance(target, str) and type(callback_id) is int:
                await self.answer_here(key, target, callback_id, args)
        elif payload.get("n") == self.node_id:
            await self.answer_here(key, None, None, args)

    async def answer_here(self, key: str, sid: str | None, callback_id: int | None,
                          args: list[Any]) -> bool:
        kept = self.callers.pop(key, None)
        callback = kept[0] if kept is not None else None
        if callback is None and sid is not None:
            callback = self.sio.manager.callbacks.get(sid, {}).pop(callback_id, None)
        if callback is None:
            return False  # nobody waits any more
        await _call(callback, args)
        return True

    def expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (_, until) in self.callers.items() if until <= now]:
            del self.callers[key]


async def _call(callback: Callable[..., Any], args: Any) -> None:
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


def _entry(key: str, wire_id: int | None, data: Any, origin: list[Any]) -> bytes | None:
    """A kept call: its key, ack id (None: not sent yet), its packet's data (binary parts
    as base64 attachments) and origin. None when it cannot be kept as JSON."""
    if not isinstance(data, list):
        return None
    placed, attachments = sio_packet.Packet.deconstruct_binary(data)
    try:
        return orjson.dumps({"k": key, "w": wire_id, "d": placed, "o": origin,
                             "b": [base64.b64encode(a).decode() for a in attachments]})
    except TypeError:
        return None


def _data(entry: dict[str, Any]) -> list[Any]:
    data = entry["d"]
    blobs = entry.get("b") or []
    if blobs:
        data = sio_packet.Packet.reconstruct_binary(
            data, [base64.b64decode(b) for b in blobs])
    if not isinstance(data, list) or not data:
        raise ValueError("a call's data is not [event, ...]")
    return data
