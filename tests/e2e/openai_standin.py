"""A scripted OpenAI-compatible API for the end-to-end tier: the model open-webui talks to.

    python -m tests.e2e.openai_standin --port 0 --tokens 30 --delay 0.1

prints `listening <port>` once it accepts connections, then serves:

- `GET /v1/models`: one model, `standin-model`;
- `POST /v1/chat/completions` with `stream: true`: a slow SSE stream of known tokens
  (`tok01 tok02 … tokNN`, one chunk every `delay` seconds) so that a browser can be seen
  rendering a partial answer before the stream ends; a prompt containing `[tokens=N]` or
  `[delay=S]` changes those for one answer;
- a prompt containing `[tool=NAME]`, in a request offering a tool NAME: a streamed call of
  that tool (no arguments); once the request carries the tool's result, an answer quoting
  it (`tool said: <result>`) followed by the tokens;
- the same without `stream`: one quick answer (open-webui's background tasks: titles, tags,
  follow-ups, when they are not switched off);
- CORS for every origin: open-webui's direct connections call it from the page;
- `GET /standin/requests`: every request received so far (path, headers that matter, body),
  so a test can see what open-webui asked; `DELETE /standin/requests` forgets them.

Nothing here is open-webui specific beyond the OpenAI wire format; a stream the client
drops is stopped at the next token.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid

from tornado import httpserver, iostream, netutil, web

MODEL = "standin-model"
TOKENS = 30
DELAY = 0.1


def token_text(i: int) -> str:
    """The i-th token (1-based) of every streamed answer; with its leading space after the
    first so that the rendered answer reads `tok01 tok02 …`."""
    return f"tok{i:02d}" if i == 1 else f" tok{i:02d}"


def full_answer(tokens: int) -> str:
    return "".join(token_text(i) for i in range(1, tokens + 1))


def _last_user_text(body: dict) -> str:
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):  # multi-part content
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _tool_step(body: dict, prompt: str) -> tuple[str | None, str | None]:
    """(tool to call, its result): the tool a `[tool=NAME]` prompt asks for when the
    request offers it, and the result once a tool message follows the prompt."""
    m = re.search(r"\[tool=([A-Za-z0-9_]+)\]", prompt)
    offered = {t.get("function", {}).get("name") for t in body.get("tools") or []}
    if not m or m.group(1) not in offered:
        return None, None
    messages = body.get("messages") or []
    last_user = max((i for i, msg in enumerate(messages) if msg.get("role") == "user"),
                    default=-1)
    results = [msg for msg in messages[last_user + 1:] if msg.get("role") == "tool"]
    return m.group(1), (str(results[-1].get("content")) if results else None)


def _override(text: str, name: str, default, kind):
    m = re.search(rf"\[{name}=([0-9.]+)\]", text)
    return kind(m.group(1)) if m else default


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []

    def add(self, handler: web.RequestHandler, body) -> None:
        self.requests.append({
            "time": time.time(), "method": handler.request.method,
            "path": handler.request.path,
            "authorization": handler.request.headers.get("Authorization", ""),
            # a browser calling us itself (open-webui's direct connections) sends its origin
            "origin": handler.request.headers.get("Origin", ""),
            "body": body,
        })


class Base(web.RequestHandler):
    def initialize(self, state: dict) -> None:
        self.state = state

    def set_default_headers(self) -> None:
        # open-webui's direct connections call the API from the page, cross-origin
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")

    def options(self) -> None:
        self.set_status(204)
        self.finish()

    def write_json(self, obj, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))


class Models(Base):
    def get(self) -> None:
        self.state["recorder"].add(self, None)
        self.write_json({"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "standin"}]})


class Completions(Base):
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            return self.write_json({"error": {"message": "body is not JSON"}}, 400)
        self.state["recorder"].add(self, body)
        prompt = _last_user_text(body)
        tokens = _override(prompt, "tokens", self.state["tokens"], int)
        delay = _override(prompt, "delay", self.state["delay"], float)
        cid = "chatcmpl-" + uuid.uuid4().hex[:12]
        if not body.get("stream"):
            # a background task (title, tags, follow-ups): answer at once, in the JSON
            # shapes those tasks parse, so that they never fail noisily
            return self.write_json({
                "id": cid, "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", MODEL),
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": self._task_answer(prompt)}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        tool, result = _tool_step(body, prompt)
        try:
            if tool is not None and result is None:
                await self._chunk(cid, body, {"role": "assistant", "tool_calls": [{
                    "index": 0, "id": "call_" + uuid.uuid4().hex[:8], "type": "function",
                    "function": {"name": tool, "arguments": "{}"}}]})
                await self._chunk(cid, body, {}, finish="tool_calls")
                self.write("data: [DONE]\n\n")
                await self.flush()
                return self.finish()
            if result is not None:
                await self._chunk(cid, body, {"role": "assistant",
                                              "content": f"tool said: {result}. "})
            for i in range(1, tokens + 1):
                await self._chunk(cid, body, {"role": "assistant", "content": token_text(i)}
                                  if i == 1 else {"content": token_text(i)})
                await asyncio.sleep(delay)
            await self._chunk(cid, body, {}, finish="stop")
            self.write("data: [DONE]\n\n")
            await self.flush()
        except iostream.StreamClosedError:
            return  # the client went away: stop streaming
        self.finish()

    async def _chunk(self, cid: str, body: dict, delta: dict, finish=None) -> None:
        self.write("data: " + json.dumps({
            "id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model", MODEL),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n")
        await self.flush()

    @staticmethod
    def _task_answer(prompt: str) -> str:
        if '"title"' in prompt or "title" in prompt.lower():
            return json.dumps({"title": "Stand-in chat"})
        if '"tags"' in prompt:
            return json.dumps({"tags": ["e2e"]})
        if "follow_ups" in prompt or "follow-up" in prompt.lower():
            return json.dumps({"follow_ups": []})
        return "ok"


class Requests(Base):
    def get(self) -> None:
        self.write_json(self.state["recorder"].requests)

    def delete(self) -> None:
        self.state["recorder"].requests.clear()
        self.write_json({"ok": True})


def make_app(tokens: int = TOKENS, delay: float = DELAY) -> web.Application:
    state = {"recorder": Recorder(), "tokens": tokens, "delay": delay}
    return web.Application([
        (r"/v1/models", Models, {"state": state}),
        (r"/v1/chat/completions", Completions, {"state": state}),
        (r"/standin/requests", Requests, {"state": state}),
    ])


async def serve(port: int, tokens: int, delay: float) -> None:
    sockets = netutil.bind_sockets(port, "127.0.0.1")
    server = httpserver.HTTPServer(make_app(tokens, delay))
    server.add_sockets(sockets)
    print(f"listening {sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()  # until killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--delay", type=float, default=DELAY)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.tokens, args.delay))


if __name__ == "__main__":
    main()
