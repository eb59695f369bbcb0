"""The chat streaming relay (protocol §5.4) against a scripted local stand-in for an
OpenAI-compatible server: what the user's tabs see, what the HTTP caller sees, what the
store keeps, and what the upstream sees (its request, and being disconnected)."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from rt.sse import SSEParser
from tests.support.appliance import API_KEY, WAIT, running

pytestmark = pytest.mark.asyncio

USAGE = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


# ---------------------------------------------------------------------- the stand-in upstream
@dataclass
class UpstreamRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def head(self, status: int = 200, content_type: str = "text/event-stream") -> None:
        self.writer.write(
            f"HTTP/1.1 {status} Whatever\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode())
        await self.writer.drain()

    async def send(self, data: bytes, pause: float = 0.002) -> None:
        """One HTTP chunk; the pause makes it a separate read on the other side."""
        if data:
            self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await self.writer.drain()
        if pause:
            await asyncio.sleep(pause)

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def wait_disconnect(self, timeout: float = WAIT) -> bool:
        """True when the relay closed the connection within `timeout`."""
        try:
            await asyncio.wait_for(self.reader.read(), timeout)  # reads until EOF
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        self.disconnected.set()
        return True


Script = Callable[[UpstreamRequest], Awaitable[None]]


class Upstream:
    """A tiny HTTP/1.1 server on a free port; each request is answered by `script`."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or answer(["Hello"])
        self.requests: list[UpstreamRequest] = []
        self._arrived = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def wait_requests(self, n: int, timeout: float = WAIT) -> list[UpstreamRequest]:
        async def until():
            while len(self.requests) < n:
                self._arrived.clear()
                await self._arrived.wait()
        await asyncio.wait_for(until(), timeout)
        return self.requests

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            req = UpstreamRequest(method, path, headers, orjson.loads(raw), reader, writer)
            self.requests.append(req)
            self._arrived.set()
            await self.script(req)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)


def chunk(content: str | None = None, finish: str | None = None, role: str | None = None,
          usage: dict | None = None) -> dict:
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    out = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
               "choices": [], "usage": usage}
    return out


def sse(obj: Any, eol: bytes = b"\n") -> bytes:
    return b"data: " + orjson.dumps(obj) + eol + eol


def answer(pieces: list[str], usage: dict | None = None, pause: float = 0.002) -> Script:
    """A well-behaved streamed answer: role chunk, content chunks, finish, usage, [DONE]."""
    async def script(req: UpstreamRequest) -> None:
        await req.head()
        await req.send(sse(chunk(role="assistant")), pause)
        for piece in pieces:
            await req.send(sse(chunk(piece)), pause)
        await req.send(sse(chunk(finish="stop")), pause)
        if usage is not None:
            await req.send(sse(chunk(usage=usage)), pause)
        await req.send(b"data: [DONE]\n\n", pause)
        await req.end()
    return script


def stalls_after(pieces: list[str]) -> Script:
    """Streams `pieces`, then sends nothing until the relay hangs up."""
    async def script(req: UpstreamRequest) -> None:
        await req.head()
        for piece in pieces:
            await req.send(sse(chunk(piece)))
        await req.wait_disconnect(10)
    return script


# ---------------------------------------------------------------------- the appliance side
def ini(upstream_url: str, **opts: Any) -> str:
    values = {"base_url": upstream_url, "api_key": "upstream-key", "emit_interval": "0",
              "idle_timeout": "5", "connect_timeout": "2", **opts}
    return "[upstream]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


@contextlib.asynccontextmanager
async def relay_env(tmp_path, script: Script | None = None, base_url: str | None = None,
                    **opts: Any):
    async with Upstream(script) as up:
        url = up.base_url if base_url is None else base_url
        async with running(tmp_path, ini(url, **opts)) as h:
            relay = h.app.relay
            assert relay is not None
            yield up, h, relay


async def tabs(h):
    """Two tabs of user a (websocket and polling) and one tab of another user c."""
    tok_a = await h.user("a", "Ann")
    await h.user("b", "Bob")
    tok_c = await h.user("c", "Cat")
    a1 = await h.connect(tok_a)
    a2 = await h.connect(tok_a, transports=("polling",))
    c = await h.connect(tok_c)
    return tok_a, a1, a2, c


def chat_body(message_id: str, chat_id: str = "chat1", model: str = "m", **extra: Any) -> dict:
    return {"model": model, "stream": True, "chat_id": chat_id, "id": message_id,
            "session_id": "sess1", "messages": [{"role": "user", "content": "hi"}], **extra}


@dataclass
class CallerResult:
    code: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def events(self) -> list[str]:
        parser = SSEParser()
        return [e.data for e in parser.feed(self.body) + parser.finish()]


async def post_chat(h, token: str | None, body: Any, timeout: float = WAIT * 2,
                    client: AsyncHTTPClient | None = None) -> CallerResult:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = HTTPRequest(h.url + "/api/chat/completions", method="POST", headers=headers,
                      body=orjson.dumps(body), request_timeout=timeout)
    resp = await (client or h.http).fetch(req, raise_error=False)
    return CallerResult(resp.code, resp.headers.get("Content-Type", ""), resp.body or b"")


def is_final(message_id: str):
    def pred(ev: dict) -> bool:
        return (ev.get("message_id") == message_id
                and ev["data"]["type"] == "chat:completion" and ev["data"]["data"]["done"])
    return pred


def is_error(message_id: str):
    return lambda ev: ev.get("message_id") == message_id and \
        ev["data"]["type"] == "chat:message:error"


def progress(client, message_id: str) -> list[str]:
    return [ev["data"]["data"]["content"] for ev in client.rec.of("events")
            if ev.get("message_id") == message_id and ev["data"]["type"] == "chat:completion"
            and not ev["data"]["data"]["done"]]


async def stored(h, message_id: str, chat_id: str = "chat1", key: str | None = API_KEY):
    return await h.api("GET", f"/api/v1/chats/{chat_id}/messages/{message_id}", key=key)


async def nothing_for(client, seconds: float = 0.2) -> None:
    await asyncio.sleep(seconds)
    assert client.rec.of("events") == []


# ---------------------------------------------------------------------- tests
async def test_stream_reaches_both_tabs_of_the_user_and_nobody_else(tmp_path):
    pieces = ["Hel", "lo", " wor", "ld"]
    async with relay_env(tmp_path, answer(pieces, usage=USAGE)) as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        result = await post_chat(h, tok_a, chat_body("m1"))

        # the HTTP caller got the upstream's chunks as SSE, then [DONE]
        assert result.code == 200 and result.content_type.startswith("text/event-stream")
        events = result.events()
        assert events[-1] == "[DONE]"
        sent = [orjson.loads(e) for e in events[:-1]]
        assert "".join(ch["choices"][0]["delta"].get("content", "")
                       for ch in sent if ch["choices"]) == "Hello world"
        assert sent[-1]["usage"] == USAGE

        # both tabs of a: progress with the full content so far, then done with usage
        for tab in (a1, a2):
            final = await tab.rec.wait_for("events", is_final("m1"))
            assert final == {"chat_id": "chat1", "message_id": "m1", "data": {
                "type": "chat:completion",
                "data": {"content": "Hello world", "done": True, "usage": USAGE}}}
            seen = progress(tab, "m1")
            assert seen and seen[-1] == "Hello world"
            assert all("Hello world".startswith(s) for s in seen)
        await nothing_for(c)

        # what the upstream got: our key, the OpenAI request without the relay's fields
        (req,) = up.requests
        assert (req.method, req.path) == ("POST", "/v1/chat/completions")
        assert req.headers["authorization"] == "Bearer upstream-key"
        assert req.body == {"model": "m", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}

        # the stored message: the asker and the API key read it, others get 404
        status, body = await stored(h, "m1", key=tok_a)
        assert status == 200
        assert body["content"] == "Hello world" and body["status"] == "done"
        assert body["usage"] == USAGE
        assert (await stored(h, "m1"))[1]["content"] == "Hello world"
        assert (await stored(h, "m1", key=h.token("b")))[0] == 404
        assert (await stored(h, "nope", key=tok_a))[0] == 404
        assert (await stored(h, "m1", key=None))[0] == 401
        assert relay.metrics() == {"active": 0, "started": 1, "done": 1, "cancelled": 0,
                                   "error": 0, "rejected": 0}


async def test_awkward_chunk_boundaries_crlf_bom_multiline_data(tmp_path):
    pieces = ["Grüße", ", ", "世界", " 🌍", "\n\nnew paragraph: ok"]
    body = b"\xef\xbb\xbf: hello\r\n\r\n"
    for i, piece in enumerate(pieces):
        data = orjson.dumps(chunk(piece))
        if i == 2:  # one event whose JSON is spread over two data lines
            half = data.index(b'"choices"')
            body += b"data: " + data[:half] + b"\r\ndata: " + data[half:] + b"\r\n\r\n"
        else:
            body += sse(chunk(piece), b"\r\n")
        body += b": keep-alive\r\n\r\n"
    body += b"data: [DONE]\r\n\r\n"

    async def script(req: UpstreamRequest) -> None:
        await req.head()
        sizes, pos, i = [1, 2, 3, 5, 8, 13], 0, 0
        while pos < len(body):  # splits CRLFs, UTF-8 characters, "data:" and the BOM
            n = sizes[i % len(sizes)]
            await req.send(body[pos:pos + n], pause=0.0005)
            pos, i = pos + n, i + 1
        await req.end()

    async with relay_env(tmp_path, script) as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        result = await post_chat(h, tok_a, chat_body("m2"))
        assert result.code == 200 and result.events()[-1] == "[DONE]"
        final = await a1.rec.wait_for("events", is_final("m2"))
        assert final["data"]["data"]["content"] == "".join(pieces)
        assert (await stored(h, "m2"))[1]["content"] == "".join(pieces)


async def test_keep_alive_comments_keep_a_slow_stream_alive(tmp_path):
    async def script(req: UpstreamRequest) -> None:
        await req.head()
        await req.send(sse(chunk("a")))
        for _ in range(8):  # 0.8 s in all, more than the idle timeout, in 0.1 s gaps
            await asyncio.sleep(0.1)
            await req.send(b": keep-alive\n\n")
        await req.send(sse(chunk("b")))
        await req.send(b"data: [DONE]\n\n")
        await req.end()

    async with relay_env(tmp_path, script, idle_timeout="0.4") as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        result = await post_chat(h, tok_a, chat_body("m3"))
        assert result.code == 200 and result.events()[-1] == "[DONE]"
        final = await a1.rec.wait_for("events", is_final("m3"))
        assert final["data"]["data"]["content"] == "ab"
        assert [ev for ev in a1.rec.of("events") if is_error("m3")(ev)] == []


async def test_upstream_http_errors(tmp_path):
    async def script(req: UpstreamRequest) -> None:
        if req.body["model"] == "missing":
            await req.head(404, "application/json")
            await req.send(orjson.dumps({"error": {"message": "model 'missing' not found"}}))
        else:
            await req.head(500, "application/json")
            await req.send(orjson.dumps({"error": {"message": "model crashed",
                                                   "type": "server_error"}}))
        await req.end()

    async with relay_env(tmp_path, script) as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        result = await post_chat(h, tok_a, chat_body("m4"))
        assert result.code == 502
        assert result.json() == {"error": "upstream_error",
                                 "message": "the upstream answered HTTP 500: model crashed"}
        for tab in (a1, a2):
            err = await tab.rec.wait_for("events", is_error("m4"))
            assert err["data"]["data"] == {
                "error": {"content": "the upstream answered HTTP 500: model crashed"}}
        status, body = await stored(h, "m4")
        assert (status, body["status"], body["content"]) == (200, "error", "")

        result = await post_chat(h, tok_a, chat_body("m5", model="missing"))
        assert result.code == 404 and "model 'missing' not found" in result.json()["message"]
        await nothing_for(c)


async def test_upstream_stall_is_an_idle_timeout(tmp_path):
    async def script(req: UpstreamRequest) -> None:
        if req.body["model"] == "silent":  # never even answers with headers
            await req.wait_disconnect(10)
            return
        await stalls_after(["partial"])(req)

    async with relay_env(tmp_path, script, idle_timeout="0.3",
                         connect_timeout="0.3") as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        started = time.monotonic()
        result = await post_chat(h, tok_a, chat_body("m6"))
        assert time.monotonic() - started < 3
        # the caller had the stream's head already: the failure ends its SSE stream
        assert result.code == 200
        assert orjson.loads(result.events()[-1])["error"]["message"] == \
            "the upstream sent nothing for 0.3 s"
        for tab in (a1, a2):
            err = await tab.rec.wait_for("events", is_error("m6"))
            assert err["data"]["data"]["error"]["content"] == "the upstream sent nothing for 0.3 s"
            assert progress(tab, "m6")[-1] == "partial"
        assert await asyncio.wait_for(up.requests[0].disconnected.wait(), WAIT) is True
        status, body = await stored(h, "m6")
        assert (body["status"], body["content"]) == ("error", "partial")

        result = await post_chat(h, tok_a, chat_body("m7", model="silent"))
        assert result.code == 504 and result.json()["error"] == "timeout"
        assert "did not answer within 0.3 s" in result.json()["message"]
        await a1.rec.wait_for("events", is_error("m7"))
        assert (await stored(h, "m7"))[1]["status"] == "error"
        assert await asyncio.wait_for(up.requests[1].disconnected.wait(), WAIT) is True
        assert relay.metrics()["error"] == 2


async def test_errors_inside_the_stream(tmp_path):
    cases = {
        "err-mid": (b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n',
                    "the upstream reported an error: overloaded"),
        "bad-json": (b"data: {not json\n\n", "the upstream sent a malformed chunk"),
        "bad-shape": (b'data: {"choices": [{"delta": {"content": 5}}]}\n\n',
                      "the upstream sent a malformed chunk"),
        "early-end": (b"", "the upstream ended the stream before [DONE]"),
    }

    async def script(req: UpstreamRequest) -> None:
        await req.head()
        await req.send(sse(chunk("Partial")))
        await req.send(cases[req.body["model"]][0])
        await req.end()

    async with relay_env(tmp_path, script) as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        for i, (model, (_, message)) in enumerate(cases.items()):
            mid = f"e{i}"
            result = await post_chat(h, tok_a, chat_body(mid, model=model))
            assert result.code == 200
            assert message in orjson.loads(result.events()[-1])["error"]["message"]
            err = await a2.rec.wait_for("events", is_error(mid))
            assert message in err["data"]["data"]["error"]["content"], model
            status, body = await stored(h, mid)
            assert (body["status"], body["content"]) == ("error", "Partial"), model
        await nothing_for(c)


async def test_unreachable_upstream(tmp_path):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with relay_env(tmp_path, base_url=f"http://127.0.0.1:{port}/v1") as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        result = await post_chat(h, tok_a, chat_body("m8"))
        assert result.code == 502
        assert result.json()["message"].startswith(
            f"cannot reach the upstream at http://127.0.0.1:{port}")
        err = await a1.rec.wait_for("events", is_error("m8"))
        assert "cannot reach the upstream" in err["data"]["data"]["error"]["content"]
        assert (await stored(h, "m8"))[1]["status"] == "error"


async def test_cancel_endpoint(tmp_path):
    async with relay_env(tmp_path, stalls_after(["Once upon"])) as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        caller = asyncio.ensure_future(post_chat(h, tok_a, chat_body("m9")))
        await a1.rec.wait_for("events", lambda ev: progress(a1, "m9") == ["Once upon"])
        path = "/api/chat/completions/m9/cancel"
        assert (await h.api("POST", path, key=None))[0] == 401
        assert (await h.api("POST", path, key="not-a-token"))[0] == 401
        assert (await h.api("POST", path, key=h.token("b")))[0] == 404  # not b's stream
        assert (await h.api("POST", path, key=tok_a)) == (
            200, {"message_id": "m9", "status": "cancelled"})
        for tab in (a1, a2):
            final = await tab.rec.wait_for("events", is_final("m9"))
            assert final["data"]["data"] == {"content": "Once upon", "done": True,
                                             "cancelled": True}
        assert await asyncio.wait_for(up.requests[0].disconnected.wait(), WAIT) is True
        result = await asyncio.wait_for(caller, WAIT)
        assert result.code == 200 and result.events()[-1] == "[DONE]"
        assert b": cancelled (cancelled by request)" in result.body
        assert (await stored(h, "m9", key=tok_a))[1] == {
            "chat_id": "chat1", "message_id": "m9", "content": "Once upon",
            "status": "cancelled", "updated_at": pytest.approx(time.time(), abs=10)}
        assert (await h.api("POST", path, key=tok_a))[0] == 404  # nothing runs any more
        await nothing_for(c)


async def test_caller_going_away_cancels(tmp_path):
    async with relay_env(tmp_path, stalls_after(["Once upon"])) as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        body = orjson.dumps(chat_body("m10"))
        reader, writer = await asyncio.open_connection("127.0.0.1", h.app.port)
        writer.write(b"POST /api/chat/completions HTTP/1.1\r\nHost: test\r\n"
                     b"Authorization: Bearer " + tok_a.encode() + b"\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        got = b""
        while b"Once upon" not in got:
            more = await asyncio.wait_for(reader.read(4096), WAIT)
            assert more, got
            got += more
        assert got.startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
        final = await a1.rec.wait_for("events", is_final("m10"))
        assert final["data"]["data"] == {"content": "Once upon", "done": True, "cancelled": True}
        assert await asyncio.wait_for(up.requests[0].disconnected.wait(), WAIT) is True
        assert (await stored(h, "m10"))[1]["status"] == "cancelled"
        assert relay.metrics()["active"] == 0


async def test_concurrency_limits(tmp_path):
    async with relay_env(tmp_path, stalls_after(["..."]), max_streams_per_user="1",
                         max_streams="2") as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        tok_b, tok_c = h.token("b"), h.token("c")
        first = asyncio.ensure_future(post_chat(h, tok_a, chat_body("L1")))
        await up.wait_requests(1)
        result = await post_chat(h, tok_a, chat_body("L2"))  # a's second: per-user limit
        assert result.code == 429 and result.json()["error"] == "rate_limited"
        second = asyncio.ensure_future(post_chat(h, tok_b, chat_body("L3")))
        await up.wait_requests(2)
        result = await post_chat(h, tok_c, chat_body("L4"))  # c's first: global limit
        assert result.code == 429 and "limit of 2" in result.json()["message"]
        assert (await post_chat(h, tok_b, chat_body("L3"))).code == 409  # already running
        assert relay.metrics()["active"] == 2 and relay.active_of("a") == 1

        cancel = "/api/chat/completions/{}/cancel"
        assert (await h.api("POST", cancel.format("L1")))[0] == 200  # the API key may cancel
        assert (await asyncio.wait_for(first, WAIT)).code == 200
        third = asyncio.ensure_future(post_chat(h, tok_a, chat_body("L5")))  # a may again
        await up.wait_requests(3)
        for mid in ("L3", "L5"):
            assert (await h.api("POST", cancel.format(mid)))[1]["status"] == "cancelled"
        assert [r.code for r in await asyncio.gather(second, third)] == [200, 200]
        assert relay.metrics() == {"active": 0, "started": 3, "done": 0, "cancelled": 3,
                                   "error": 0, "rejected": 2}


async def test_deltas_are_coalesced(tmp_path):
    async def script(req: UpstreamRequest) -> None:
        await req.head()
        for _ in range(30):  # 300 one-character deltas in ~0.3 s
            for _ in range(10):
                await req.send(sse(chunk("x")), pause=0)
            await asyncio.sleep(0.01)
        await req.send(b"data: [DONE]\n\n")
        await req.end()

    async with relay_env(tmp_path, script, emit_interval="0.1") as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        started = time.monotonic()
        result = await post_chat(h, tok_a, chat_body("m11"))
        elapsed = time.monotonic() - started
        assert result.code == 200 and len(result.events()) == 301  # the caller gets them all
        final = await a1.rec.wait_for("events", is_final("m11"))
        assert final["data"]["data"]["content"] == "x" * 300
        seen = progress(a1, "m11")
        assert 1 <= len(seen) <= elapsed / 0.1 + 2, (len(seen), elapsed)
        assert [len(s) for s in seen] == sorted({len(s) for s in seen})  # growing, no repeats


async def test_authentication_and_validation(tmp_path):
    async with relay_env(tmp_path) as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        body = chat_body("m12")
        for token in (None, "garbage", API_KEY, h.token("ghost"), h.token("a", expires=-3600)):
            result = await post_chat(h, token, body)
            assert result.code == 401 and result.json()["error"] == "unauthorized", token
        for bad in ({**body, "chat_id": ""}, {**body, "id": None}, {**body, "stream": False},
                    {**body, "messages": "hi"}, [body]):
            result = await post_chat(h, tok_a, bad)
            assert result.code == 400 and result.json()["error"] == "bad_request", bad
        assert up.requests == []
        # b cannot take over a's message id once it is stored
        assert (await post_chat(h, tok_a, body)).code == 200
        assert (await post_chat(h, h.token("b"), body)).code == 409
        assert (await post_chat(h, tok_a, body)).code == 200  # a may regenerate it
        await nothing_for(c)


async def test_relay_not_configured(tmp_path):
    async with relay_env(tmp_path, base_url="") as (up, h, relay):
        tok_a = await h.user("a")
        result = await post_chat(h, tok_a, chat_body("m13"))
        assert result.code == 503 and "not configured" in result.json()["message"]


async def test_stop_cancels_and_stores_running_streams(tmp_path):
    async with relay_env(tmp_path, stalls_after(["bye"])) as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        caller = asyncio.ensure_future(post_chat(h, tok_a, chat_body("m14")))
        await a1.rec.wait_for("events", lambda ev: progress(a1, "m14") == ["bye"])
        await relay.stop()
        final = await a1.rec.wait_for("events", is_final("m14"))
        assert final["data"]["data"]["cancelled"] is True
        assert (await stored(h, "m14"))[1]["status"] == "cancelled"
        assert await asyncio.wait_for(up.requests[0].disconnected.wait(), WAIT) is True
        assert (await asyncio.wait_for(caller, WAIT)).code == 200
        assert (await post_chat(h, tok_a, chat_body("m15"))).code == 503


async def test_upstream_that_ignores_stream_true(tmp_path):
    async def script(req: UpstreamRequest) -> None:
        await req.head(200, "application/json")
        await req.send(orjson.dumps({
            "id": "x", "object": "chat.completion", "model": "m", "usage": USAGE,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "All at once"}}]}))
        await req.end()

    async with relay_env(tmp_path, script) as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        result = await post_chat(h, tok_a, chat_body("m16"))
        assert result.code == 200 and result.events()[-1] == "[DONE]"
        assert orjson.loads(result.events()[0])["choices"][0]["delta"]["content"] == "All at once"
        final = await a2.rec.wait_for("events", is_final("m16"))
        assert final["data"]["data"] == {"content": "All at once", "done": True, "usage": USAGE}


async def test_appliance_stop_with_a_stream_running(tmp_path, caplog):
    own = AsyncHTTPClient(force_instance=True)  # outlives the harness: the app cuts it
    async with relay_env(tmp_path, stalls_after(["bye"])) as (up, h, relay):
        tok_a, a1, a2, c = await tabs(h)
        caller = asyncio.ensure_future(post_chat(h, tok_a, chat_body("m17"), client=own))
        await a1.rec.wait_for("events", lambda ev: progress(a1, "m17") == ["bye"])
        started = time.monotonic()
    # the appliance stopped: the stream ended cancelled, the upstream was let go, fast
    assert time.monotonic() - started < 5
    assert relay.metrics()["active"] == 0 and relay.metrics()["cancelled"] == 1
    assert up.requests[0].disconnected.is_set()
    # the HTTP caller was answered or cut off, never left hanging
    await asyncio.wait_for(asyncio.gather(caller, return_exceptions=True), WAIT)
    own.close()
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
