"""python-socketio's Redis client manager for cluster mode, on the same connection options
as the store (URL / Sentinel / Cluster), with the key prefix in its channel.

What python-socketio 5.18.1's `AsyncRedisManager` does by itself: one pub/sub channel
(default `socketio`) shared by every node; emits, room changes, disconnects and `call`
acks cross nodes as JSON messages (the local node handles its own part directly). It
connects through `Redis.from_url` or a `redis+sentinel://` URL, with `redis_options`; it
has no Redis Cluster support, publishes twice and then drops the message, and its
listener retries with a backoff growing to 60 s.

This subclass keeps that wire format (other python-socketio emitters on the same channel
still interoperate) and overrides only the two methods that `AsyncPubSubManager` asks
pub/sub backends to implement, `_publish` and `_listen`:

- the client comes from `RedisTarget` (redis_conn.py), so URL, Sentinel (master name from
  the URL's host) and Cluster behave as for the store; on a Cluster it uses sharded pub/sub
  (SPUBLISH / SSUBSCRIBE, Redis >= 7): a message travels to the one shard owning the
  channel's slot instead of being broadcast over the cluster bus to every node;
- the channel is `<prefix>:socketio`, so two deployments can share one Redis;
- the listener reconnects after a restart or failover with a jittered backoff from 0.1 s
  to 5 s, and says whether it is subscribed (`ready()`, for readyz). It counts as
  subscribed once Redis confirmed it, and a connection that goes silent is found by its
  own PING: a Redis that accepts but never answers, or a connection lost without a close,
  cannot hold it (`timeout` bounds each wait, see `_listen`);
- `initialize()` is idempotent, so the app can start the listener at start-up (stock
  python-socketio starts it at the first client connection only);
- a publish is bounded in time and does not raise: the local part of an emit has already
  happened, and cross-node delivery resumes when Redis is back. Only where the caller
  set `delivery_required` (the HTTP API's emits) a failed publish raises StoreError, so
  that the backend gets a 503 instead of a 202 for a message other nodes never got;
- an emit whose target rooms have no member on this node is dropped right after the JSON
  is parsed, before python-socketio decodes binary attachments and walks the rooms. That
  is the per-node cost of traffic for rooms with no local member (see `stats`);
- every change of local room membership is reported to `room_watch` (the bridge to
  open-webui's per-room channels, socketio_bridge.py, when it is on), and a local room
  entry or connect returns once that bridge is subscribed to the room's channel.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson
import socketio
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core.errors import StoreError, delivery_required
from ..core.tasks import TaskGroup, cancel_and_wait, cancel_swallowed
from .fanout import FanoutMixin
from .redis_conn import (
    REDIS_ERRORS,
    AnyRedis,
    RedisTarget,
    close_quietly,
    close_subscription,
    drop_idle,
    ensure_ready,
    message_reader,
    subscriber,
)

log = logging.getLogger("rt.backend")

READ_TIMEOUT = 1.0  # seconds one pub/sub read waits before looping (cancellation points)
SUBSCRIBED = ("subscribe", "ssubscribe")


CONTROL = "rt:control"  # method of the appliance's own node-to-node messages


class RoomWatch(Protocol):
    """Who hears of local room changes (the open-webui bridge with room channels,
    socketio_bridge.py): told of every room whose local membership may have changed, and
    waited for before an entry completes."""

    def room_changed(self, namespace: str, room: Any) -> None: ...
    async def settled(self) -> None: ...


class RedisClientManager(socketio.AsyncRedisManager, FanoutMixin):
    name = "rt-redis"
    multi_node = True

    def __init__(self, target: RedisTarget, *, channel: str | None = None,
                 write_only: bool = False, logger: Any = None, json: Any = None,
                 publish_timeout: float | None = None,
                 backoff: tuple[float, float] = (0.1, 5.0)) -> None:
        super().__init__(url=target.url, channel=channel or target.keys().channel("socketio"),
                         write_only=write_only, logger=logger, json=json)
        self.target = target
        self.sharded = target.cluster
        # every wait on Redis here is bounded by `[state] redis_timeout`, as in the store
        self.timeout = target.command_timeout
        self.publish_timeout = publish_timeout or target.command_timeout
        self.backoff = backoff
        self.listening = False
        self.stats: Counter[str] = Counter()
        self._pub: AnyRedis | None = None
        self._last_error_log = 0.0
        self._initialized = False
        # the handlers of control messages, running (referenced, failures logged)
        self._control_tasks = TaskGroup()
        # set by the open-webui bridge ([openwebui] mirror_emits): emits published for the
        # other nodes are also copied where open-webui's own socket server listens
        self.mirror: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        # the bridge to open-webui's per-room channels (socketio_bridge.py), when on: told
        # of every room whose local membership may have changed, and waited for before an
        # entry completes, so that it hears what is published to the room from then on
        self.room_watch: RoomWatch | None = None

    def initialize(self) -> None:
        """Start listening (once). python-socketio calls this only when the first client
        connects; the app calls it at start too, so that a node without clients still
        gets what is addressed to it (the acks of API `call`s it made). Needs a running
        event loop and `set_server()` done (the AsyncServer constructor does that)."""
        if self._initialized:
            return
        self._initialized = True
        super().initialize()

    # ------------------------------------------------------------------ rooms
    # FanoutMixin's basic_* methods are where every membership change passes (connects,
    # room entries, leaves, closes and disconnects, local or sent by other nodes)
    def basic_enter_room(self, sid: str, namespace: str, room: Any,
                         eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if self.room_watch is not None and room is not None:
            self.room_watch.room_changed(namespace, room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        if self.room_watch is not None:
            # leaving the None room is the end of the session: its sid room is gone too
            self.room_watch.room_changed(namespace, sid if room is None else room)

    async def connect(self, sid: str, namespace: str) -> Any:
        sid = await super().connect(sid, namespace)
        if sid is not None and self.room_watch is not None:
            # the channel of the sid's own room, entered at pre_connect (usually confirmed
            # already by the connect handler's first enter_room). Waited for here, after
            # the handler accepted the session: a refusal (e.g. the store is unavailable)
            # must not wait for Redis twice
            await self.room_watch.settled()
        return sid

    async def enter_room(self, sid: str, namespace: str, room: Any,
                         eio_sid: str | None = None) -> None:
        await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        if self.room_watch is not None:
            await self.room_watch.settled()

    # ------------------------------------------------------------------ state
    async def ready(self) -> None:
        """Raise StoreError while the listener is not subscribed (Redis down, failover):
        cross-node delivery is not working then."""
        if not self.write_only and not self.listening:
            raise StoreError(f"pub/sub on {self.target.describe()} is not connected")

    async def close(self) -> None:
        """Stop listening and close the connections (at the app's stop)."""
        task = getattr(self, "thread", None)
        await cancel_and_wait(task if isinstance(task, asyncio.Task) else None)
        await self._control_tasks.stop()
        self.listening = False
        if self._pub is not None:
            pub, self._pub = self._pub, None
            await close_quietly(pub)

    def _log_error(self, what: str, exc: BaseException | str) -> None:
        # At most one line per 5 s: an outage must not flood the journal.
        now = time.monotonic()
        if now - self._last_error_log >= 5.0:
            self._last_error_log = now
            log.error("%s on %s: %s", what, self.target.describe(),
                      str(exc) or type(exc).__name__)

    # ------------------------------------------------------------------ publish
    async def _publish(self, data: Any) -> None:
        if self._pub is None:
            self._pub = self.target.client()
        payload = self.json.dumps(data)
        pub = self._pub

        async def send() -> None:
            await ensure_ready(pub)
            if self.sharded:
                await pub.spublish(self.channel, payload)
            else:
                await pub.publish(self.channel, payload)

        try:
            await asyncio.wait_for(send(), self.publish_timeout)
            self.stats["published"] += 1
            if (self.mirror is not None and data.get("method") == "emit"
                    and data.get("callback") is None):
                await self.mirror(data)
        except REDIS_ERRORS as exc:
            self.stats["publish_failed"] += 1
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, (asyncio.TimeoutError, RedisTimeoutError)):
                await drop_idle(pub)  # they may be dead for good (see drop_idle)
                reason = f"no answer within {self.publish_timeout:g} s"
            self._log_error("cannot publish (message dropped)", reason)
            if delivery_required.get():
                raise StoreError(f"reached this node's sessions only: {self.target.describe()}: "
                                 f"{reason}") from exc

    async def publish_control(self, kind: str, payload: dict[str, Any]) -> None:
        """A control message for the other nodes' handlers (`on_control`)."""
        await self._publish({"method": CONTROL, "kind": kind, "payload": payload,
                             "host_id": self.host_id})

    def _control(self, data: dict[str, Any]) -> None:
        kind = data.get("kind")
        handler = self.control_handler(kind)
        payload = data.get("payload")
        if handler is not None and isinstance(payload, dict):
            work = handler(payload)
            if work is not None:
                self._control_tasks.spawn(f"control message {kind}", work)

    # ------------------------------------------------------------------ listen
    async def _listen(self) -> AsyncIterator[dict[str, Any]]:
        low, high = self.backoff
        delay = low
        while True:
            if cancel_swallowed():  # in the backoff or a failed subscribe (see tasks.py)
                raise asyncio.CancelledError
            client: AnyRedis | None = None
            pubsub: Any = None
            try:
                client = self.target.listener()
                if self.sharded:
                    # the slot map (which node owns the channel); not under the deadline
                    # below, for the reason given in RedisUser._run
                    await client.initialize()
                try:
                    # connecting, subscribing and Redis's confirmation: one deadline
                    # (SUBSCRIBE is only sent; a Redis that accepts connections and never
                    # answers must not count as listening)
                    async with asyncio.timeout(self.timeout):
                        pubsub = subscriber(client)  # the confirmation is read below
                        if self.sharded:
                            await pubsub.ssubscribe(self.channel)
                            read = pubsub.get_sharded_message
                        else:
                            await pubsub.subscribe(self.channel)
                            read = message_reader(pubsub)
                        while (message := await read(timeout=READ_TIMEOUT)) is None \
                                or message.get("type") not in SUBSCRIBED:
                            pass
                except TimeoutError:
                    raise TimeoutError(
                        f"subscribing got no answer within {self.timeout:g} s") from None
                log.info("pub/sub subscribed to %s on %s", self.channel, self.target.describe())
                self.listening = True
                delay = low
                loop, me = asyncio.get_running_loop(), asyncio.current_task()
                heard, pinged = loop.time(), None
                while True:
                    message = await read(ignore_subscribe_messages=True, timeout=READ_TIMEOUT)
                    if cancel_swallowed(me):
                        raise asyncio.CancelledError
                    if message is None:
                        pinged = await self._silence(pubsub, heard, pinged)
                        continue
                    heard, pinged = loop.time(), None  # a pong counts too
                    if message.get("type") in ("message", "smessage"):
                        data = self._accept(message.get("data"))
                        if data is not None:
                            yield data
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a background loop: back off, go on
                self.listening = False
                self.stats["listen_errors"] += 1
                if not isinstance(exc, REDIS_ERRORS):
                    log.exception("pub/sub listener failed unexpectedly")
                self._log_error(f"pub/sub lost; reconnecting in {delay:.1f} s", exc)
            finally:
                self.listening = False
                await close_subscription(pubsub, client)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, high)

    async def _silence(self, pubsub: Any, heard: float,
                       pinged: float | None) -> float | None:
        """Called when a read found nothing. After `timeout` seconds without a message
        (at least READ_TIMEOUT) send a PING; if its pong does not come within `timeout`,
        raise, and `_listen` reconnects: a connection lost without a close (a partition,
        a Redis that stopped answering) is found this way only. Returns when the
        unanswered PING went out, None while none is due."""
        now = asyncio.get_running_loop().time()
        if pinged is not None:
            if now - pinged > self.timeout:
                raise TimeoutError(f"no answer to PING within {self.timeout:g} s")
            return pinged
        if now - heard < max(self.timeout, READ_TIMEOUT):
            return None
        try:
            async with asyncio.timeout(self.timeout):
                if self.sharded:  # one connection per shard holding the channel
                    for node in list(pubsub.node_pubsub_mapping.values()):
                        await node.ping()
                else:
                    await pubsub.ping()
        except TimeoutError:
            raise TimeoutError(f"PING not sent within {self.timeout:g} s") from None
        return asyncio.get_running_loop().time()

    def _accept(self, raw: Any) -> dict[str, Any] | None:
        """Parse a message; None for what this node has nothing to do with."""
        self.stats["received"] += 1
        if not isinstance(raw, (bytes, str)):
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:
                data = self.json.loads(raw)
            except ValueError:
                return None
        if not isinstance(data, dict):
            return None
        method = data.get("method")
        if method != "callback" and data.get("host_id") == self.host_id:
            return None  # our own message, already handled locally
        if method == CONTROL:
            self._control(data)  # ours, not python-socketio's
            return None
        if method == "emit" and not self.has_local_target(data):
            self.stats["skipped_no_local_member"] += 1
            return None
        return data

    def has_local_target(self, data: dict[str, Any]) -> bool:
        """Whether an emit can reach a session of this node: its namespace has sessions
        here and (for a room emit) one of its rooms, or sids, has a member here."""
        namespace = data.get("namespace") or "/"
        if not self.rooms.get(namespace):
            return False
        target = data.get("room")
        if target is None:
            return True
        targets = target if isinstance(target, list) else [target]
        try:
            return any(self.has_room(namespace, t) for t in targets)
        except TypeError:  # an unhashable room name: let python-socketio decide
            return True
