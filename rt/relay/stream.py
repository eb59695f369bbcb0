"""One relayed chat stream (protocol §5.4): one user's chat request → an OpenAI-compatible
upstream → `events` to all the user's tabs, and the same stream back to the HTTP caller.

One `RelayStream` per message, run as one task that owns everything about it:

    tornado callbacks (status line, headers, body bytes, end) ──queue──▶ RelayStream.run
        SSE parser → chunk → content so far ─┬─▶ chat:completion to user:{id}, coalesced
                                             ├─▶ raw chunk to the HTTP caller (if any)
                                             └─▶ at the end: store, final emit, caller's end

The upstream request is tornado's AsyncHTTPClient with a streaming callback. Its own
timeouts cannot express "no byte for N seconds", so the run loop is also the watchdog:
before the response headers the deadline is `connect_timeout` from the start, after them
`idle_timeout` from the last byte (keep-alive comments count). Cancelling — the cancel
endpoint, the HTTP caller going away, a timeout, shutdown — closes the upstream socket at
once through `_AbortableTCPClient`, so the upstream sees the disconnect and stops generating.

Every stream ends exactly once with one of: done (after `[DONE]`, or a clean end after a
`finish_reason`), cancelled, error. The content is stored first, then the final event is
emitted, so a tab that reads the message right after the final event finds it.

Limits (concurrent streams per user, and in all) are counted on this node; the emits and
the store reach every node, so the user's tabs may be anywhere in the cluster.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPInputError
from tornado.iostream import IOStream, StreamClosedError
from tornado.simple_httpclient import (
    HTTPStreamClosedError,
    HTTPTimeoutError,
    SimpleAsyncHTTPClient,
)
from tornado.tcpclient import TCPClient

from ..auth import Identity
from ..backends import ChatMessage, Store
from ..emitter import Emitter
from ..sse import SSEError, SSEEvent, SSEParser
from .request import (
    DONE_GRACE,
    MAX_CONTENT,
    MAX_ERROR_BODY,
    MAX_PLAIN_BODY,
    MAX_STREAM_BYTES,
    ChatRequest,
    Failure,
    Outcome,
    _clip,
    _where,
    error_text,
    http_failure,
)

log = logging.getLogger("rt.relay")


class StreamOwner(Protocol):
    """What a stream needs of the service that runs it (service.py)."""

    emitter: Emitter
    store: Store

    def _forget(self, stream: RelayStream) -> None: ...

    def _count(self, status: str) -> None: ...


class _AbortableTCPClient(TCPClient):
    """A TCPClient that remembers the connection it made, so the request can be cut at any
    moment: while connecting, while waiting for headers, or in the middle of the body.
    Closing the stream makes tornado finish the fetch with HTTPStreamClosedError."""

    def __init__(self, resolver=None) -> None:
        super().__init__(resolver=resolver)
        self.stream: IOStream | None = None
        self._aborted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def connect(self, *args: Any, **kwargs: Any) -> IOStream:
        if self._aborted.done():
            raise StreamClosedError()
        attempt = asyncio.ensure_future(super().connect(*args, **kwargs))
        await asyncio.wait({attempt, self._aborted}, return_when=asyncio.FIRST_COMPLETED)
        if self._aborted.done():
            attempt.add_done_callback(_close_if_connected)  # never leak a late socket
            raise StreamClosedError()
        self.stream = attempt.result()
        return self.stream

    def abort(self) -> None:
        if not self._aborted.done():
            self._aborted.set_result(None)
        if self.stream is not None:
            self.stream.close()


def _close_if_connected(attempt: asyncio.Future) -> None:
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result().close()


class RelayStream:
    def __init__(self, service: StreamOwner, identity: Identity, request: ChatRequest,
                 upstream: Any, listen: bool) -> None:
        self.service = service
        self.user_id = identity.id
        self.request = request
        self.chat_id = request.chat_id
        self.message_id = request.message_id
        self.upstream = upstream  # the [upstream] settings in force when it started
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        # what an HTTP caller reads: ("open",), ("chunk", raw json), ("end", Outcome)
        self.output: asyncio.Queue | None = asyncio.Queue() if listen else None
        self.outcome: Outcome | None = None
        self.finished = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.emits = 0  # chat:completion progress emits (not the final one)
        self._inbox: asyncio.Queue = asyncio.Queue()  # from tornado's callbacks
        self._parts: list[str] = []
        self._length = 0
        self._usage: dict | None = None
        self._finish_reason: str | None = None
        self._dirty = False
        self._last_emit = -math.inf
        self._code: int | None = None
        self._content_type = ""
        self._headers_seen = False
        self._last_byte = self.started
        self._body = bytearray()  # an error body, or a non-streamed answer
        self._parser = SSEParser()
        self._cancel_reason: str | None = None
        self._ended = False
        self._tcp: _AbortableTCPClient | None = None
        self._client: SimpleAsyncHTTPClient | None = None

    # ------------------------------------------------------------------ public
    @property
    def content(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the upstream request now; the stream ends `cancelled` with what it has."""
        if self.outcome is not None or self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        if self._tcp is not None:
            self._tcp.abort()
        self._inbox.put_nowait(("cancel", reason))

    # ------------------------------------------------------------------ the task
    async def run(self) -> None:
        fetch: asyncio.Future | None = None
        try:
            fetch = self._begin()
            await self._pump()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relay stream %s failed", self.message_id)
            if self.outcome is None:
                await self._finish("error", Failure("internal error in the relay", 500,
                                                    "internal"))
        finally:
            await self._close(fetch)

    async def _close(self, fetch: asyncio.Future | None) -> None:
        if self.outcome is None:  # stopped hard (shutdown past its deadline)
            self.outcome = Outcome("cancelled", self.content, self._usage,
                                   reason=self._cancel_reason or "stopped")
        done_cleanly = self.outcome.status == "done" and fetch is not None and not fetch.done()
        try:
            if not done_cleanly and self._tcp is not None:
                self._tcp.abort()
            self._publish(("end", self.outcome))
            self._ended = True
            self.service._forget(self)
            self.finished.set()
            # let the upstream end its response politely after [DONE]
            if done_cleanly and fetch is not None:
                await asyncio.wait({fetch}, timeout=DONE_GRACE)
        finally:
            if self._tcp is not None:
                self._tcp.abort()
            if self._client is not None:
                self._client.close()
            o = self.outcome
            why = o.failure.message if o.failure else o.reason
            log.info("relay %s user %s chat %s: %s%s, %d chars, %d emits, %.2f s",
                     self.message_id, self.user_id, self.chat_id, o.status,
                     f" ({why})" if why else "", len(o.content), self.emits,
                     self.loop.time() - self.started)

    def _begin(self) -> asyncio.Future:
        s = self.upstream
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if s.api_key:
            headers["Authorization"] = f"Bearer {s.api_key}"
        request = HTTPRequest(
            s.base_url.rstrip("/") + "/chat/completions", method="POST", headers=headers,
            body=orjson.dumps(self.request.payload), connect_timeout=s.connect_timeout,
            request_timeout=0,  # no total limit: the watchdog bounds silence instead
            follow_redirects=False, decompress_response=True, user_agent="rt-appliance",
            header_callback=self._on_header, streaming_callback=self._on_bytes)
        # One client per stream, so its TCP client knows which socket to cut.
        # (bytes are streamed, not kept: the body limit only guards against runaway streams)
        self._client = SimpleAsyncHTTPClient(force_instance=True, max_body_size=MAX_STREAM_BYTES)
        self._client.tcp_client.close()
        self._tcp = _AbortableTCPClient(resolver=self._client.resolver)
        self._client.tcp_client = self._tcp
        if self._cancel_reason is not None:
            self._tcp.abort()
        fetch = self._client.fetch(request, raise_error=False)
        fetch.add_done_callback(self._on_end)
        return fetch

    # tornado's callbacks: only queue, never think
    def _on_header(self, line: str) -> None:
        if self._code is None:
            try:
                self._code = int(line.split(" ", 2)[1])
            except (IndexError, ValueError):
                self._code = 0
        elif line in ("\r\n", "\n"):
            self._inbox.put_nowait(("headers", None))
        else:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                self._content_type = value.strip().lower()

    def _on_bytes(self, chunk: bytes) -> None:
        self._inbox.put_nowait(("data", chunk))

    def _on_end(self, fetch: asyncio.Future) -> None:
        if not fetch.cancelled():
            fetch.exception()  # retrieved here; read again by the pump
        self._inbox.put_nowait(("end", fetch))

    # ------------------------------------------------------------------ the loop
    def _deadline(self) -> float:
        if self._headers_seen:
            return self._last_byte + self.upstream.idle_timeout
        return self.started + self.upstream.connect_timeout

    async def _pump(self) -> None:
        interval = self.upstream.emit_interval
        while self.outcome is None:
            item = None
            if not self._inbox.empty():
                item = self._inbox.get_nowait()
            else:
                wake = self._deadline()
                if self._dirty:
                    wake = min(wake, self._last_emit + interval)
                timeout = wake - self.loop.time()
                if timeout > 0:
                    try:
                        item = await asyncio.wait_for(self._inbox.get(), timeout)
                    except TimeoutError:
                        pass
            if item is not None:
                await self._handle(*item)
                if self.outcome is not None:
                    return
            now = self.loop.time()
            if now >= self._deadline():
                await self._finish("error", self._silence())
            elif self._dirty and now >= self._last_emit + interval:
                await self._progress()

    def _silence(self) -> Failure:
        s = self.upstream
        if self._headers_seen:
            return Failure(f"the upstream sent nothing for {s.idle_timeout:g} s", 504, "timeout")
        return Failure(f"the upstream at {_where(s.base_url)} did not answer within "
                       f"{s.connect_timeout:g} s", 504, "timeout")

    async def _handle(self, kind: str, value: Any) -> None:
        if kind == "cancel":
            await self._finish("cancelled", reason=value)
        elif self._cancel_reason is not None:
            return  # what was already on its way when the cancel came is dropped
        elif kind == "headers":
            self._headers_seen = True
            self._last_byte = self.loop.time()
            if self._code == 200:
                self._publish(("open",))
        elif kind == "data":
            self._last_byte = self.loop.time()
            await self._data(value)
        elif kind == "end":
            await self._end(value)

    @property
    def _streamed(self) -> bool:
        return not self._content_type.startswith("application/json")

    async def _data(self, chunk: bytes) -> None:
        if self._code != 200:
            if len(self._body) < MAX_ERROR_BODY:
                self._body += chunk[:MAX_ERROR_BODY - len(self._body)]
            return
        if not self._streamed:
            if len(self._body) + len(chunk) > MAX_PLAIN_BODY:
                return await self._finish("error", Failure("the upstream answer is too large"))
            self._body += chunk
            return
        await self._events(lambda: self._parser.feed(chunk))

    async def _events(self, parse: Callable[[], list[SSEEvent]]) -> None:
        """Handle what the SSE parser gives (fed bytes, or the end), until an outcome."""
        try:
            events = parse()
        except SSEError as exc:
            return await self._finish("error", Failure(f"the upstream stream is malformed: {exc}"))
        for event in events:
            await self._event(event)
            if self.outcome is not None:
                return

    async def _end(self, fetch: asyncio.Future) -> None:
        exc: BaseException | None = (None if not fetch.cancelled()
                                     else asyncio.CancelledError())
        if exc is None:
            exc = fetch.exception()
        if exc is not None:
            return await self._finish("error", self._transport_failure(exc))
        response: HTTPResponse = fetch.result()
        if response.code != 200:
            return await self._finish("error", http_failure(response.code, bytes(self._body)))
        if not self._streamed:
            return await self._plain_answer()
        await self._events(self._parser.finish)
        if self.outcome is not None:
            return
        if self._finish_reason is not None:
            return await self._finish("done")  # a server that forgets [DONE]
        await self._finish("error", Failure("the upstream ended the stream before [DONE]"))

    def _transport_failure(self, exc: BaseException) -> Failure:
        s = self.upstream
        where = _where(s.base_url)
        if isinstance(exc, HTTPTimeoutError):
            return Failure(f"the upstream at {where} did not accept the connection within "
                           f"{s.connect_timeout:g} s", 504, "timeout")
        if isinstance(exc, (HTTPStreamClosedError, StreamClosedError)):
            if self._headers_seen:
                return Failure("the upstream closed the connection before the end of the answer")
            return Failure(f"the upstream at {where} closed the connection without answering")
        if isinstance(exc, HTTPInputError):
            return Failure(f"the upstream sent a malformed HTTP response: {_clip(str(exc))}")
        if isinstance(exc, OSError):
            return Failure(f"cannot reach the upstream at {where}: "
                           f"{exc.strerror or exc.__class__.__name__}")
        if isinstance(exc, HTTPClientError):
            return Failure(f"the upstream request failed: {_clip(str(exc))}")
        return Failure(f"the upstream request failed: {exc.__class__.__name__}: {_clip(str(exc))}")

    async def _event(self, event: SSEEvent) -> None:
        if event.event not in ("message", "error"):
            return  # named events are not part of an OpenAI stream; skip what we don't know
        if event.is_done:
            return await self._finish("done")
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return await self._malformed(f"a chunk is not JSON: {_clip(event.data, 80)!r}")
        if not isinstance(chunk, dict):
            return await self._malformed("a chunk is not a JSON object")
        error = chunk.get("error")
        if error or event.event == "error":
            return await self._finish("error", Failure(
                f"the upstream reported an error: {error_text(error or chunk)}"))
        choices = chunk.get("choices")
        text = None
        if choices is not None:
            if not isinstance(choices, list):
                return await self._malformed("'choices' is not a list")
            if choices:
                first = choices[0]
                delta = first.get("delta") if isinstance(first, dict) else None
                if delta is None and isinstance(first, dict):
                    delta = {}
                if not isinstance(delta, dict):
                    return await self._malformed("'choices[0].delta' is not an object")
                text = delta.get("content")
                if text is not None and not isinstance(text, str):
                    return await self._malformed("'choices[0].delta.content' is not a string")
                if first.get("finish_reason"):
                    self._finish_reason = str(first["finish_reason"])
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        self._publish(("chunk", event.data))
        if text:
            await self._append(text)

    async def _malformed(self, what: str) -> None:
        await self._finish("error", Failure(f"the upstream sent a malformed chunk: {what}"))

    async def _plain_answer(self) -> None:
        """An upstream that ignored `stream: true` and sent one chat.completion object."""
        try:
            answer = orjson.loads(bytes(self._body))
        except orjson.JSONDecodeError:
            answer = None
        if isinstance(answer, dict) and answer.get("error"):
            return await self._finish("error", Failure(
                f"the upstream reported an error: {error_text(answer['error'])}"))
        try:
            choice = answer["choices"][0]
            text = choice["message"].get("content") or ""
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (KeyError, IndexError, TypeError, AttributeError):
            return await self._malformed("the answer is neither a stream nor a chat completion")
        if isinstance(answer.get("usage"), dict):
            self._usage = answer["usage"]
        self._finish_reason = choice.get("finish_reason") or "stop"
        chunk = {"id": answer.get("id"), "object": "chat.completion.chunk",
                 "model": answer.get("model"),
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                              "finish_reason": self._finish_reason}]}
        if self._usage is not None:
            chunk["usage"] = self._usage
        self._publish(("open",))
        self._publish(("chunk", orjson.dumps(chunk).decode()))
        if text:
            await self._append(text)
        await self._finish("done")

    # ------------------------------------------------------------------ output
    async def _append(self, text: str) -> None:
        if self._length + len(text) > MAX_CONTENT:
            return await self._finish("error", Failure(
                f"the answer is longer than {MAX_CONTENT} characters"))
        self._parts.append(text)
        self._length += len(text)
        self._dirty = True
        if self.upstream.emit_interval <= 0:
            await self._progress()

    async def _progress(self) -> None:
        self._dirty = False
        self._last_emit = self.loop.time()
        self.emits += 1
        await self._emit("chat:completion", {"content": self.content, "done": False})

    async def _emit(self, kind: str, data: dict) -> None:
        payload = {"chat_id": self.chat_id, "message_id": self.message_id,
                   "data": {"type": kind, "data": data}}
        try:
            await self.service.emitter.emit("events", payload, users=[self.user_id])
        except asyncio.CancelledError:
            raise
        except Exception:  # the stream goes on; the stored message lets tabs catch up
            log.warning("relay %s: emit to user %s failed", self.message_id, self.user_id,
                        exc_info=True)

    def _publish(self, item: tuple) -> None:
        if self.output is not None and not self._ended:
            self.output.put_nowait(item)

    async def _finish(self, status: str, failure: Failure | None = None,
                      reason: str | None = None) -> None:
        if self.outcome is not None:
            return
        content = self.content
        self.outcome = Outcome(status, content, self._usage, failure, reason)
        self.service._count(status)
        # 1. keep it, so that a tab reading the message after the final event finds it
        try:
            await self.service.store.put_chat_message(ChatMessage(
                self.chat_id, self.message_id, self.user_id, content, status, self._usage,
                time.time()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("relay %s: could not store the message", self.message_id,
                        exc_info=True)
        # 2. tell the tabs
        if status == "error":
            if failure is None:  # every error outcome is made with its Failure
                raise ValueError("an error outcome needs a Failure")
            if self._dirty:  # the tabs see the same content as the store
                await self._progress()
            await self._emit("chat:message:error", {"error": {"content": failure.message}})
        else:
            data: dict[str, Any] = {"content": content, "done": True}
            if self._usage is not None:
                data["usage"] = self._usage
            if status == "cancelled":
                data["cancelled"] = True
            self._dirty = False
            await self._emit("chat:completion", data)
