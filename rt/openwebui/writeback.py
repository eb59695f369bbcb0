"""What the socket layer owes open-webui's database, written back through open-webui itself.

- Note content: the rendered content editors send with their Yjs updates is posted to
  `POST /api/v1/notes/{id}/update` with an editor's own token (open-webui checks write
  access itself), after the document service's debounce. Per note only the newest content
  waits (a queue bounded by the number of notes being edited, itself bounded by `max_notes`);
  a failure that says nothing about the editor (open-webui down, 5xx) is retried with a
  backoff up to 30 s, so nothing acknowledged to an editor is lost while open-webui is
  briefly away (the content is also durable in the appliance's own store). A refusal (the
  editor lost write access) drops that content with a warning.
- Read markers (`events:chat` / `events:channel` `last_read_at`): sent through
  `OpenWebuiSocket` as the tab would have sent them to open-webui; coalesced per user.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketError

from ..backends.redis_conn import KeySpace
from ..core.tasks import TaskGroup
from .api import NotFound, OpenWebuiApi, Refused, Unavailable
from .socket_port import OpenWebuiSocket, SocketPortError

log = logging.getLogger("rt.openwebui")


class EchoMarks:
    """Note contents this deployment wrote to open-webui, remembered `ttl` seconds
    (cluster-wide in Redis, else on this node).

    open-webui answers a note update over HTTP with `events:note` carrying the content to
    the note's room, and its editor replaces its whole content with such an "external"
    change. For a content the editors themselves produced that echo is at best useless and,
    arriving after a newer edit, it would write old text back into the shared document; so
    echoes of what we wrote are delivered without their content (`strip_echo`)."""

    def __init__(self, redis: Any = None, prefix: str = "open-webui", ttl: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.redis = redis
        self.keys = KeySpace(prefix)
        self.ttl = ttl
        self.clock = clock
        self._local: OrderedDict[str, float] = OrderedDict()
        self.stripped = 0

    def _key(self, note_id: str, content: Any) -> str:
        digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return self.keys.key("note-echo", note_id, digest)

    async def mark(self, note_id: str, content: Any) -> None:
        key = self._key(note_id, content)
        if self.redis is not None:
            await self.redis.set(key, 1, ex=max(1, int(self.ttl)))
            return
        now = self.clock()
        self._local[key] = now + self.ttl
        self._local.move_to_end(key)
        while self._local and next(iter(self._local.values())) < now:
            self._local.popitem(last=False)

    async def seen(self, note_id: str, content: Any) -> bool:
        key = self._key(note_id, content)
        if self.redis is not None:
            return bool(await self.redis.exists(key))
        return self._local.get(key, 0.0) >= self.clock()

    async def strip_echo(self, message: dict) -> dict:
        """The bridge's filter: an `events:note` whose content we wrote, without it."""
        if message.get("method") != "emit" or message.get("event") != "events:note":
            return message
        args = message.get("data")
        if not isinstance(args, list) or not args or not isinstance(args[0], dict):
            return message
        first = args[0]
        inner = first.get("data")
        if not isinstance(inner, dict) or "content" not in inner:
            return message
        try:
            echo = await self.seen(str(first.get("id")), inner["content"])
        except Exception as exc:  # Redis away: deliver it as open-webui sent it
            log.warning("note echo check failed: %s", exc)
            return message
        if not echo:
            return message
        self.stripped += 1
        rest = {k: v for k, v in inner.items() if k != "content"}
        return {**message, "data": [{**first, "data": rest}, *args[1:]]}


class NoteWriter:
    def __init__(self, api: OpenWebuiApi, echoes: EchoMarks | None = None,
                 max_notes: int = 10000, backoff: tuple[float, float] = (0.5, 30.0)):
        self.api = api
        self.echoes = echoes or EchoMarks()
        self.max_notes = max_notes
        self.backoff = backoff
        self.pending: OrderedDict[str, tuple[dict, str]] = OrderedDict()  # note → (data, token)
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()  # set whenever nothing waits (the stop's flush)
        self._empty.set()
        self.written = self.failed = self.dropped = 0

    def submit(self, note_id: str, data: dict, token: str) -> None:
        """Queue the newest content of a note (replacing an older one still waiting)."""
        self.pending.pop(note_id, None)
        self.pending[note_id] = (data, token)
        self._empty.clear()
        while len(self.pending) > self.max_notes:
            lost, _ = self.pending.popitem(last=False)
            self.dropped += 1
            log.error("note %s: content not written to open-webui, %d notes waiting",
                      lost, self.max_notes)
        self._wake.set()

    async def run(self) -> None:
        """Write queued contents until cancelled (a background task of the app)."""
        delay = self.backoff[0]
        while True:
            if not self.pending:
                self._empty.set()
                self._wake.clear()
                await self._wake.wait()
            note_id, (data, token) = next(iter(self.pending.items()))
            try:
                if "content" in data:
                    await self._mark_echo(note_id, data["content"])
                await self.api.update_note(token, note_id, data)
            except Unavailable as exc:
                self.failed += 1
                log.warning("note %s: open-webui unavailable (%s); retrying in %.1f s",
                            note_id, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff[1])
                continue
            except (Refused, NotFound) as exc:
                log.warning("note %s: open-webui refused the content: %s", note_id, exc)
                self.dropped += 1
            else:
                self.written += 1
            delay = self.backoff[0]
            # drop it unless a newer content arrived while this one was being written
            if self.pending.get(note_id, (None, None))[0] is data:
                del self.pending[note_id]

    async def _mark_echo(self, note_id: str, content: Any) -> None:
        try:
            await self.echoes.mark(note_id, content)
        except Exception as exc:  # Redis away: the write matters more than its echo
            log.warning("note %s: echo mark not kept: %s", note_id, exc)

    async def flush(self, deadline: float) -> None:
        """At stop: give the writer up to `deadline` seconds to empty the queue."""
        try:
            async with asyncio.timeout(deadline):
                await self._empty.wait()
        except TimeoutError:
            log.error("%d note contents not written to open-webui at stop", len(self.pending))


class ReadMarkers:
    """`last_read_at` of chats and channels, sent to open-webui's own socket handlers."""

    def __init__(self, port: OpenWebuiSocket):
        self.port = port
        # user → (token, events)
        self.pending: dict[str, tuple[str, dict[tuple[str, str], Any]]] = {}
        self.tasks = TaskGroup()
        self.sent = self.failed = 0

    def mark(self, user_id: str, token: str, event: str, target_id: str, payload: Any) -> None:
        token_events = self.pending.get(user_id)
        if token_events is None:
            self.pending[user_id] = (token, {(event, target_id): payload})
            self.tasks.spawn(f"read markers of {user_id}", self._send(user_id))
        else:
            token_events[1][(event, target_id)] = payload  # same marker again: once

    async def _send(self, user_id: str) -> None:
        await asyncio.sleep(0)  # markers of the same moment go in one session
        token, events = self.pending.pop(user_id)
        batch: list[tuple[str, Any]] = []
        if any(event == "events:channel" for event, _ in events):
            # open-webui takes a channel's marker only from a socket in the channel's room
            batch.append(("user-join", {"auth": {"token": token}}))
        batch += [(event, payload) for (event, _), payload in events.items()]
        try:
            await self.port.send(token, batch)
            self.sent += len(events)
        except (TimeoutError, OSError, SocketPortError, WebSocketError, HTTPClientError) as exc:
            self.failed += len(events)
            log.warning("read markers of user %s not sent to open-webui: %s", user_id, exc)

    async def close(self) -> None:
        await self.tasks.stop()
