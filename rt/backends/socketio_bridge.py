"""python-socketio's own pub/sub protocol, spoken with open-webui's backend on the Redis the
appliance shares with it (Redis mode, `[openwebui] pubsub`).

open-webui runs python-socketio with a Redis client manager and keeps its own Socket.IO
server, which has no browsers when the appliance serves them. What its backend emits, the
calls it makes and the room changes it asks for travel as python-socketio 5.x pub/sub
messages, JSON objects with a `method`, on channels *without* the appliance's key prefix:

- `<pubsub_channel>` (default `socketio`): everything with the stock `AsyncRedisManager`
  (`room_channels = false`); with open-webui 0.12's default room-channel manager
  (`room_channels = true`) everything except emits aimed at one room;
- `<pubsub_channel>#<namespace>#<room>`: with room channels, an emit to one room (a sid is
  a room too), so that a node hears only about rooms it has members of.

This bridge listens there beside the appliance's own cluster channel (redis_manager.py,
`<prefix>:socketio`, untouched) and acts for the sessions of this node only:

- `emit` (room, list of rooms or everybody; `skip_sid` as a string or a list; binary
  attachments base64-encoded under `binary`, as python-socketio encodes them; `callback`
  for a foreign `call`) goes out through the appliance's own local fan-out, the path of a
  local emit. A client's ack of a foreign call is published back as
  `{"method": "callback", "host_id": <the caller's>, "sid", "namespace", "id", "args"}`
  on `<pubsub_channel>`, so open-webui's `sio.call(...)` returns the browser's answer;
- `disconnect`, `enter_room`, `leave_room`, `close_room` act on local sessions and rooms;
- `callback` addressed to this bridge completes a call made through it.

With room channels it subscribes exactly the rooms (and sids) that have a member here, as
open-webui 0.12's manager does: the client manager reports every room whose local
membership may have changed (`room_changed`), a sync task SUBSCRIBEs or UNSUBSCRIBEs and
then sends a numbered PING, and the reader sees the PONG once Redis has applied everything
before it. `settled()` waits for that, so an `enter_room` (or a connect: the sid's room)
returns only when an emit published after it cannot be missed. (That bookkeeping is
socketio_rooms.py.)

With connection state recovery an emit to this node's recoverable sessions, or to those
away from it (socketio_away.py), is kept in the recovery log for exactly them and
delivered from there; a call to an away session is kept for its recovery.

Only JSON is accepted: a message that is not a JSON object (a pickle, as older
python-socketio versions sent, or garbage), has fields of the wrong type or is larger than
`max_message_bytes` is dropped and counted in `stats`; nothing is unpickled, and nothing
is decoded beyond the JSON parse (the checks are socketio_protocol.py). Plain
PUBLISH/SUBSCRIBE also on a Redis Cluster, where open-webui uses them too (a plain PUBLISH
reaches every node of a Cluster). After a connection loss the bridge reconnects with a
jittered backoff and subscribes again every channel a local room needs; each retry is one
log line.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..core.errors import StoreError
from ..core.tasks import TaskGroup, cancel_swallowed
from .redis_conn import (
    REDIS_ERRORS,
    AnyRedis,
    RedisTarget,
    close_quietly,
    close_subscription,
    message_reader,
    subscriber,
)
from .redis_manager import RedisClientManager
from .socketio_away import AwaySessions, ForeignAnswer
from .socketio_protocol import (
    HELD_METHOD,
    MAX_MESSAGE_BYTES,
    METHODS,
    MIRROR_HOST_PREFIX,
    OWN_METHODS,
    OWNER_METHOD,
    PICKLE_PROTO,
    Malformed,
    namespace_of,
    reconstruct_binary,
    room_of,
    rooms_of,
    sid_of,
)
from .socketio_rooms import SYNC_PING, RoomChannels

log = logging.getLogger("rt.backend")

READ_TIMEOUT = 1.0  # seconds one read waits before looking for silence (and cancellation)
ALIVE_PING = b"rt-bridge-alive"


class SocketioBridge:
    """python-socketio's pub/sub with a foreign server (open-webui's) for this node's
    sessions; started and stopped by the Redis backend, `ready()` counts for readyz."""

    def __init__(self, manager: RedisClientManager, target: RedisTarget, *,
                 channel: str = "socketio", room_channels: bool = True,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 backoff: tuple[float, float] = (0.1, 5.0)) -> None:
        if not channel:
            raise ValueError("the pub/sub channel name must not be empty")
        self.manager = manager
        self.target = target
        self.channel = channel
        self.room_channels = room_channels
        self.max_message_bytes = max_message_bytes
        self.backoff = backoff
        self.timeout = target.command_timeout
        # who we are in python-socketio's protocol: callbacks for calls made through the
        # bridge come back addressed to it (the cluster channel has its own host id)
        self.host_id = uuid.uuid4().hex
        self.mirror_host_id = MIRROR_HOST_PREFIX + self.host_id
        self.listening = False
        # counters the integrator exports (see `counters`): received; one per method
        # handled (emit, callback, disconnect, enter_room, leave_room, close_room);
        # ignored (callbacks for other hosts, methods python-socketio 5.18 does not have);
        # skipped_no_local_member; recorded, calls_parked, calls_kept_elsewhere, owner,
        # held (connection state recovery: socketio_away.py);
        # refused_{pickle,not_json,malformed,too_large}; callbacks_published,
        # callbacks_failed; channels_subscribed, channels_unsubscribed; listen_errors,
        # handler_errors, subscribe_wait_timeouts
        self.stats: collections.Counter[str] = collections.Counter()
        self._listener = TaskGroup()  # the listener, while started
        self._pub: AnyRedis | None = None
        self._first_subscribe: asyncio.Event = asyncio.Event()
        self.rooms = RoomChannels(manager, channel, per_room=room_channels,
                                  timeout=self.timeout, stats=self.stats,
                                  on_ready=self._subscribed, on_wait_timeout=self._wait_timeout)
        self._last_log: dict[str, float] = {}
        # told of every accepted message from open-webui before it is acted on (the
        # open-webui link forgets cached rights when open-webui announces a change)
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        # may rewrite a message before it is acted on (the open-webui link strips the echo
        # of note contents the appliance wrote itself)
        self.filters: list[Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = []
        if room_channels:
            manager.room_watch = self
        # sessions away from this node whose rooms stay subscribed, and which node records
        # for a session that recovers (socketio_away.py)
        self.away = AwaySessions(self.rooms, self.publish, self.host_id,
                                 room_channels=room_channels, timeout=self.timeout)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, wait: float | None = None) -> None:
        """Start listening and wait (at most `wait`, default `[state] redis_timeout`) for
        the first subscription, so that a node starts taking connections with the bridge
        working. Not being subscribed by then is not fatal: the listener keeps trying and
        `ready()` reports it."""
        if not self._listener:
            self._listener.start("openwebui pub/sub", self._run())
        try:
            await asyncio.wait_for(self._first_subscribe.wait(), wait or self.timeout)
        except TimeoutError:
            log.warning("open-webui pub/sub on %s not subscribed yet; retrying in the "
                        "background", self.target.describe())

    async def close(self) -> None:
        await self._listener.stop()
        self.listening = False
        self.rooms.release_waiters()
        if self._pub is not None:
            pub, self._pub = self._pub, None
            await close_quietly(pub)

    async def ready(self) -> None:
        """Raise StoreError while not subscribed: open-webui's emits are not arriving."""
        if not self.listening:
            raise StoreError(f"open-webui pub/sub ({self.channel}) on "
                             f"{self.target.describe()} is not subscribed")

    def counters(self) -> dict[str, int]:
        return dict(self.stats)

    @property
    def subscriptions(self) -> int:
        """Channels subscribed now (the main channel and the room channels)."""
        return len(self.rooms.subscribed)

    # ------------------------------------------------------------------ room channels
    # the client manager's `room_watch` (see redis_manager.RoomWatch); the bookkeeping is
    # RoomChannels' (socketio_rooms.py)
    def room_channel(self, namespace: str, room: str) -> str:
        return self.rooms.room_channel(namespace, room)

    def room_changed(self, namespace: str, room: Any) -> None:
        """Called by the client manager whenever the local membership of `room` (a named
        room or a sid) may have changed; cheap, synchronous, never fails."""
        self.rooms.changed(namespace, room)

    async def settled(self) -> None:
        """Return once every room change reported so far is in effect in Redis (see
        RoomChannels.settled)."""
        await self.rooms.settled()

    def _subscribed(self) -> None:
        if self._first_subscribe.is_set() and self.away.recorder is not None:
            # subscribed again after a loss: what came meanwhile was heard by nobody here
            self.away.recorder.pubsub_gap()
        self.listening = True
        self._first_subscribe.set()
        log.info("open-webui pub/sub subscribed to %s (%d channels) on %s", self.channel,
                 len(self.rooms.subscribed), self.target.describe())

    def _wait_timeout(self) -> None:
        self._log("wait", logging.WARNING, "room channel subscription not confirmed "
                  "within %g s on %s", self.timeout, self.target.describe())

    # ------------------------------------------------------------------ listening
    async def _run(self) -> None:
        low, high = self.backoff
        delay = low
        while True:
            if cancel_swallowed():  # see tasks.py
                raise asyncio.CancelledError
            client: AnyRedis | None = None
            pubsub: Any = None
            try:
                # no silent reconnects inside redis-py: after a loss this loop builds a new
                # connection and subscribes everything again, and the barrier's PONGs are
                # never lost on a connection replaced underneath
                client = self.target.listener(retry=Retry(NoBackoff(), 0))
                if self.target.cluster:
                    await client.initialize()  # the node map; see RedisClientManager._listen
                pubsub = subscriber(client, ignore_subscribe_messages=True)
                try:
                    async with asyncio.timeout(self.timeout):
                        await pubsub.subscribe(self.channel)  # the connection the reader reads
                except TimeoutError:
                    raise TimeoutError(f"subscribing got no answer within {self.timeout:g} s"
                                       ) from None
                self.rooms.connecting()
                delay = low
                await self._session(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a background loop: back off, go on
                self.stats["listen_errors"] += 1
                if not isinstance(exc, REDIS_ERRORS):
                    log.exception("open-webui pub/sub listener failed unexpectedly")
                # one line per retry (the backoff bounds their rate)
                log.warning("open-webui pub/sub on %s lost: %s; reconnecting in %.1f s",
                            self.target.describe(), str(exc) or type(exc).__name__, delay)
            finally:
                self.listening = False
                self.rooms.lost()
                await close_subscription(pubsub, client)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, high)

    async def _session(self, pubsub: Any) -> None:
        """The reader and the subscription sync on one connection, until either fails."""
        tasks = TaskGroup()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def ended(task: asyncio.Task[Any]) -> None:
            if not done.done():
                if task.cancelled():
                    done.set_exception(ConnectionError("pub/sub session ended"))
                else:
                    done.set_exception(task.exception() or ConnectionError(
                        "pub/sub session ended"))  # not reached: both loop forever

        try:
            for name, work in (("sync", self.rooms.sync(pubsub)), ("read", self._read(pubsub))):
                tasks.start(f"open-webui pub/sub {name}", work).add_done_callback(ended)
            await done  # raises what ended the first of them
        finally:
            await tasks.stop()

    async def _read(self, pubsub: Any) -> None:
        loop, me = asyncio.get_running_loop(), asyncio.current_task()
        heard, pinged = loop.time(), None
        read = message_reader(pubsub)
        while True:
            message = await read(ignore_subscribe_messages=True, timeout=READ_TIMEOUT)
            if cancel_swallowed(me):
                raise asyncio.CancelledError
            now = loop.time()
            if message is None:
                # silence: a PING must come back within `timeout`, or the connection is
                # dead without having said so (a partition, a frozen Redis)
                if pinged is not None:
                    if now - pinged > self.timeout:
                        raise TimeoutError(f"no answer to PING within {self.timeout:g} s")
                elif now - heard >= max(self.timeout, READ_TIMEOUT):
                    async with asyncio.timeout(self.timeout):
                        await pubsub.ping(ALIVE_PING)
                    pinged = now
                continue
            heard, pinged = now, None
            kind = message.get("type")
            if kind == "message":
                await self.handle(message.get("data"))
            elif kind == "pong":
                data = message.get("data")
                if isinstance(data, bytes) and data.startswith(SYNC_PING):
                    self.rooms.confirm(int(data[len(SYNC_PING):]))

    # ------------------------------------------------------------------ messages
    async def handle(self, raw: Any) -> None:
        """One message from the channels: parsed, checked, acted on for local sessions.
        Never raises for what the message holds."""
        self.stats["received"] += 1
        data = self._parse(raw)
        if data is None:
            return
        method = data["method"]
        try:
            if method == OWNER_METHOD:
                await self.away.on_owner(data)  # ours come back to us too: the point
                self.stats["owner"] += 1
                return
            if method == HELD_METHOD:
                await self.away.on_held(data)
                self.stats["held"] += 1
                return
            if method == "callback":
                if data.get("host_id") != self.host_id:
                    # an answer to somebody else's call (the ones this bridge publishes
                    # come back to it too)
                    self.stats["ignored"] += 1
                    return
                await self._on_callback(data)
                self.stats[method] += 1
                return
            host = data.get("host_id")
            if host == self.host_id or (isinstance(host, str)
                                        and host.startswith(MIRROR_HOST_PREFIX)):
                self.stats["ignored"] += 1
                return  # our own, or an appliance's copy for open-webui's listeners
            for observe in self.observers:
                observe(data)
            for rewrite in self.filters:
                data = await rewrite(data)
            if method == "emit":
                await self._on_emit(data)
            elif method == "disconnect":
                await self._on_disconnect(data)
            elif method in ("enter_room", "leave_room"):
                self._on_room_member(data, method == "enter_room")
            else:
                self._on_close_room(data)
            self.stats[method] += 1
        except Malformed as exc:
            self._refuse("malformed", f"{method}: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one message must not stop the listener
            self.stats["handler_errors"] += 1
            log.exception("open-webui pub/sub: handling a %r message failed", method)

    def _parse(self, raw: Any) -> dict[str, Any] | None:
        if not isinstance(raw, (bytes, str)):
            self._refuse("malformed", "not a string")
            return None
        if len(raw) > self.max_message_bytes:
            self._refuse("too_large", f"{len(raw)} bytes (limit {self.max_message_bytes})")
            return None
        if isinstance(raw, bytes) and raw[:1] == bytes((PICKLE_PROTO,)):
            # python-socketio before 5.x pickled its messages; never unpickle Redis input
            self._refuse("pickle", "a pickle, not JSON")
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # python's json module (open-webui's default codec) writes NaN and Infinity,
            # which orjson refuses; anything else that fails here is not JSON at all
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                self._refuse("not_json", "not JSON")
                return None
        if not isinstance(data, dict) or data.get("method") not in METHODS + OWN_METHODS:
            if isinstance(data, dict) and isinstance(data.get("method"), str):
                self.stats["ignored"] += 1  # somebody else's business (a newer protocol)
                return None
            self._refuse("malformed", "not an object with a known method")
            return None
        return data

    def _refuse(self, reason: str, detail: str) -> None:
        self.stats[f"refused_{reason}"] += 1
        self._log(reason, logging.WARNING, "open-webui pub/sub: message dropped (%s): %s",
                  reason, detail)

    def _log(self, key: str, level: int, fmt: str, *args: Any) -> None:
        # at most one line per kind per 5 s: a flood of bad messages must not flood the log
        now = time.monotonic()
        if now - self._last_log.get(key, -10.0) >= 5.0:
            self._last_log[key] = now
            log.log(level, fmt, *args)

    async def _on_emit(self, data: dict[str, Any]) -> None:
        namespace = namespace_of(data)
        event = data.get("event")
        if not isinstance(event, str) or not event:
            raise Malformed("event is not a non-empty string")
        room = rooms_of(data.get("room"), "room")
        skip_sid = rooms_of(data.get("skip_sid"), "skip_sid")
        skipped = set([skip_sid] if isinstance(skip_sid, str) else skip_sid or ())
        recorder = self.away.recorder if namespace == "/" else None
        away = self.away.targets(room, skipped) if recorder is not None else []
        # the cheap look first: most emits are for rooms without a member on this node
        local = self.manager.has_local_target({"namespace": namespace, "room": room})
        remote = data.get("callback")
        # a call to a session of no node here (one channel): kept if it is recoverable
        elsewhere = (not local and not away and remote is not None
                     and recorder is not None and isinstance(room, str))
        if not local and not away and not elsewhere:
            self.stats["skipped_no_local_member"] += 1
            return
        args = data.get("data")
        if not isinstance(args, list):
            raise Malformed("data is not a list")
        if data.get("binary"):
            args = reconstruct_binary(args)
        payload: Any = args[0] if len(args) == 1 else tuple(args)
        if remote is not None:
            if not (isinstance(remote, list) and len(remote) == 3
                    and isinstance(remote[0], str) and isinstance(remote[1], str)
                    and type(remote[2]) is int and isinstance(data.get("host_id"), str)):
                raise Malformed("callback is not [sid, namespace, id] with a host_id")
            callback = ForeignAnswer(self.answer, data["host_id"], *remote)
            if local:
                await self.manager.emit(event, payload, namespace=namespace, room=room,
                                        skip_sid=skip_sid, callback=callback,
                                        ignore_queue=True)
            if recorder is not None:  # kept for where the sessions come back
                self.stats.update(await self.away.keep_call(
                    recorder, away, room if elsewhere and isinstance(room, str) else None,
                    event, args, callback.origin))
            return
        recorded: list[str] = []
        waiting: list[str] = []  # recovering here: the node that held them records
        if recorder is not None and local:
            recorded, waiting = self.away.split(
                recorder, self.manager.get_participants(namespace, room), skipped,
                event, args)
        recorded += away
        extra = set(waiting)
        if recorded and recorder is not None:
            # delivered from the log (with offsets), appended in order without waiting
            # here (recovery/appends.py); if it cannot be kept, as before (the fallback)
            await recorder.record_foreign_soon(event, args, recorded, functools.partial(
                self.manager.emit, event, payload, namespace=namespace, room=recorded,
                ignore_queue=True))
            self.stats["recorded"] += 1
            extra |= set(recorded)
        if not local:
            return
        if extra:
            skipped |= extra
            if not any(sid not in skipped
                       for sid, _ in self.manager.get_participants(namespace, room)):
                return
            skip_sid = sorted(skipped)
        await self.manager.emit(event, payload, namespace=namespace, room=room,
                                skip_sid=skip_sid, ignore_queue=True)

    async def answer(self, host_id: str, sid: str, namespace: str, callback_id: int,
                     *args: Any) -> None:
        """A client acked a foreign call: the answer goes back to the caller."""
        try:
            payload = orjson.dumps({"method": "callback", "host_id": host_id, "sid": sid,
                                    "namespace": namespace, "id": callback_id,
                                    "args": list(args)})
        except TypeError as exc:  # e.g. binary in the ack: the protocol has no form for it
            self.stats["callbacks_failed"] += 1
            self._log("answer", logging.WARNING, "open-webui pub/sub: ack of call %s for %s "
                      "cannot be sent as JSON: %s", callback_id, sid, exc)
            return
        if await self.publish(payload):
            self.stats["callbacks_published"] += 1
        else:
            self.stats["callbacks_failed"] += 1

    async def mirror(self, message: dict[str, Any]) -> None:
        """A copy of an emit of the appliance (python-socketio's message, as published on
        the cluster channel) where open-webui's own socket server listens, so that tabs
        still connected to open-webui (a deployment moving over) get what the appliance's
        get: on the room's channel with room channels, else on the main channel. Other
        appliance nodes ignore it by its host id."""
        room = message.get("room")
        if isinstance(room, list) and len(room) == 1:
            room = room[0]  # one room: open-webui's managers listen on its channel
        copy = {**message, "room": room, "host_id": self.mirror_host_id}
        channel = (self.room_channel(message.get("namespace") or "/", room)
                   if self.room_channels and isinstance(room, str) else self.channel)
        if await self.publish(orjson.dumps(copy), channel):
            self.stats["mirrored"] += 1

    async def publish(self, payload: bytes, channel: str | None = None) -> bool:
        """PUBLISH on the main channel (or `channel`), bounded by `[state] redis_timeout`;
        False (logged) when Redis did not take it."""
        if self._pub is None:
            self._pub = self.target.client()
        try:
            await asyncio.wait_for(self._pub.publish(channel or self.channel, payload),
                                   self.timeout)
            return True
        except REDIS_ERRORS as exc:
            self._log("publish", logging.ERROR, "open-webui pub/sub: cannot publish on %s: %s",
                      self.target.describe(), str(exc) or type(exc).__name__)
            return False

    async def _on_callback(self, data: dict[str, Any]) -> None:
        sid, callback_id, args = data.get("sid"), data.get("id"), data.get("args")
        if not isinstance(sid, str) or type(callback_id) is not int \
                or not isinstance(args, list):
            raise Malformed("callback needs sid, id and args")
        await self.manager.trigger_callback(sid, callback_id, args)

    async def _on_disconnect(self, data: dict[str, Any]) -> None:
        sid, namespace = sid_of(data), namespace_of(data)
        if self.manager.is_connected(sid, namespace):
            await self.manager.server.disconnect(sid, namespace=namespace, ignore_queue=True)
        elif sid in self.away.held and self.away.recorder is not None:
            # away: it must not come back with what it had (e.g. after `access:updated`)
            await self.away.recorder.ended(sid)

    def _on_room_member(self, data: dict[str, Any], enter: bool) -> None:
        sid, namespace, room = sid_of(data), namespace_of(data), room_of(data)
        manager = self.manager
        if not (manager.is_connected(sid, namespace) or manager.is_pre_connected(sid, namespace)):
            return
        # the local part only, and without waiting for the subscription: this runs in the
        # reader, which is what reads the confirmation
        if enter:
            try:
                manager.basic_enter_room(sid, namespace, room)
            except ValueError as exc:  # e.g. another session's sid as the room
                raise Malformed(str(exc)) from None
        else:
            manager.basic_leave_room(sid, namespace, room)

    def _on_close_room(self, data: dict[str, Any]) -> None:
        namespace, room = namespace_of(data), room_of(data)
        try:
            self.manager.basic_close_room(room, namespace)
        except ValueError as exc:  # a sid room cannot be closed
            raise Malformed(str(exc)) from None
