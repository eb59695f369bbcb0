"""Headless Chromium for the end-to-end flows, through browser_driver.mjs (playwright-core).

    with Browser.start(log) as browser:
        ctx = browser.context("admin", base_url)
        page = ctx.page("admin-tab1")
        page.goto("/auth")
        page.fill("#email", "a@example.com")
        page.screenshot(path)

Calls block until the driver answers, each bounded by its timeout (plus a margin for the
round trip). `Browser.begin(...)` sends a command without waiting, so two pages can act at
the same time (two users typing into one note); `Pending.result()` collects the answer.
"""
from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.redis_servers import _die_with_parent

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "browser_driver.mjs"
NODE_MODULES = HERE.parent / "node" / "node_modules"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DEFAULT_TIMEOUT = 15.0  # seconds, for one browser action
MARGIN = 10.0  # seconds of round trip beyond a command's own timeout


def missing() -> list[str]:
    """What the browser side lacks, as install hints."""
    hints = []
    if not os.path.exists(CHROMIUM):
        hints.append("Debian's chromium (apt-get install chromium)")
    if shutil.which("node") is None or not (NODE_MODULES / "playwright-core").is_dir():
        hints.append("node and the npm test packages (make node-deps)")
    return hints


class BrowserError(RuntimeError):
    pass


class Pending:
    def __init__(self, browser: Browser, cmd: dict, wait: float) -> None:
        self.browser, self.cmd, self.wait = browser, cmd, wait
        self.replies: queue.Queue = queue.Queue(maxsize=1)

    def result(self) -> dict:
        try:
            reply = self.replies.get(timeout=self.wait)
        except queue.Empty:
            raise BrowserError(
                f"no answer from the browser driver within {self.wait} s to {self.cmd}; "
                f"driver stderr:\n{self.browser.stderr_tail()}") from None
        if not reply.get("ok"):
            raise BrowserError(f"{self.cmd['cmd']} {self._what()}: {reply.get('error')}")
        return reply

    def _what(self) -> str:
        keys = ("page", "selector", "hasText", "url", "fn")
        return " ".join(f"{k}={str(self.cmd[k])[:200]!r}" for k in keys if k in self.cmd)


class Browser:
    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc, self.log = proc, log
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, log: Path) -> Browser:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as err:
            proc = subprocess.Popen([shutil.which("node"), str(DRIVER)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, cwd=HERE,
                                    env={**os.environ, "CHROMIUM": CHROMIUM},
                                    start_new_session=True, preexec_fn=_die_with_parent)
        return cls(proc, log)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                pending = self._pending.pop(reply.get("id"), None)
            if pending is not None:
                pending.replies.put(reply)

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def begin(self, cmd: str, timeout: float = DEFAULT_TIMEOUT, **fields: Any) -> Pending:
        if self.proc.poll() is not None:
            raise BrowserError(f"browser driver exited with {self.proc.returncode}:\n"
                               f"{self.stderr_tail()}")
        msg = {"id": next(self._ids), "cmd": cmd, "timeout": int(timeout * 1000), **fields}
        pending = Pending(self, msg, timeout + MARGIN)
        with self._lock:
            self._pending[msg["id"]] = pending
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()
        return pending

    def call(self, cmd: str, timeout: float = DEFAULT_TIMEOUT, **fields: Any) -> dict:
        return self.begin(cmd, timeout, **fields).result()

    def context(self, name: str, base_url: str, storage_state: dict | None = None) -> Context:
        self.call("newContext", ctx=name, baseURL=base_url, storageState=storage_state)
        return Context(self, name)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("exit", timeout=10)
            except BrowserError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


@dataclass
class Context:
    """One browser profile (cookies, localStorage): one signed-in user."""

    browser: Browser
    name: str

    def page(self, name: str) -> Page:
        self.browser.call("newPage", ctx=self.name, page=name)
        return Page(self.browser, name)

    def storage_state(self) -> dict:
        return self.browser.call("storageState", ctx=self.name)["state"]

    def close(self) -> None:
        self.browser.call("closeContext", ctx=self.name)


@dataclass
class Page:
    browser: Browser
    name: str

    def call(self, cmd: str, timeout: float = DEFAULT_TIMEOUT, **fields: Any) -> dict:
        return self.browser.call(cmd, timeout, page=self.name, **fields)

    def begin(self, cmd: str, timeout: float = DEFAULT_TIMEOUT, **fields: Any) -> Pending:
        return self.browser.begin(cmd, timeout, page=self.name, **fields)

    def goto(self, url: str, timeout: float = 30.0) -> None:
        self.call("goto", timeout, url=url)

    def delay_responses(self, pattern: str, seconds: float) -> None:
        """Answers to requests matching the glob `pattern` reach the page `seconds` late."""
        self.call("delayResponses", pattern=pattern, ms=int(seconds * 1000))

    def reload(self, timeout: float = 30.0) -> None:
        self.call("reload", timeout)

    def url(self) -> str:
        return self.call("url")["url"]

    def click(self, selector: str, timeout: float = DEFAULT_TIMEOUT, **kw: Any) -> None:
        self.call("click", timeout, selector=selector, **kw)

    def fill(self, selector: str, value: str, **kw: Any) -> None:
        self.call("fill", selector=selector, value=value, **kw)

    def type(self, selector: str | None, text: str, delay_ms: int = 30, **kw: Any) -> None:
        """Type key by key into `selector` (clicked first), or where the focus is."""
        self.begin_type(selector, text, delay_ms, **kw).result()

    def begin_type(self, selector: str | None, text: str, delay_ms: int = 30,
                   **kw: Any) -> Pending:
        """`type` without waiting for it to finish: `.result()` does."""
        fields = {"selector": selector} if selector else {}
        return self.begin("type", DEFAULT_TIMEOUT + len(text) * delay_ms / 1000, text=text,
                          delay=delay_ms, **fields, **kw)

    def press(self, key: str, selector: str | None = None) -> None:
        self.call("press", key=key, **({"selector": selector} if selector else {}))

    def wait_for(self, selector: str, timeout: float = DEFAULT_TIMEOUT,
                 state: str = "visible", **kw: Any) -> None:
        self.call("waitFor", timeout, selector=selector, state=state, **kw)

    def count(self, selector: str, **kw: Any) -> int:
        return self.call("count", selector=selector, **kw)["count"]

    def texts(self, selector: str, **kw: Any) -> list[str]:
        return self.call("texts", selector=selector, **kw)["texts"]

    def evaluate(self, fn: str, arg: Any = None) -> Any:
        return self.call("evaluate", fn=fn, arg=arg).get("value")

    def wait_function(self, fn: str, arg: Any = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Poll `fn(arg)` in the page (every 50 ms) until it returns something truthy."""
        return self.call("waitFunction", timeout, fn=fn, arg=arg).get("value")

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.call("screenshot", path=str(path), fullPage=full_page)

    def sockets(self, frames: int = 0) -> dict:
        return self.call("sockets", frames=frames)

    def wait_socket_disconnected(self, since_ms: float, timeout: float = 40.0) -> dict:
        """The page's Socket.IO session ends after `since_ms` (driver clock): its websocket
        closes or the server sends a DISCONNECT packet. Returns how and when."""
        return self.call("waitSocketDisconnected", timeout, since=since_ms, after=since_ms)

    def now_ms(self) -> float:
        """The driver's clock (ms), which frame and socket times are given in."""
        return self.call("now")["now"]

    def wait_socket_connected(self, timeout: float = DEFAULT_TIMEOUT) -> dict:
        """The newest Socket.IO websocket of the page is connected; raises with the
        server's refusal (CONNECT_ERROR) when it was refused."""
        return self.call("waitSocketConnected", timeout)

    def wait_frame(self, pattern: str, direction: str = "in", since_ms: float = 0,
                   timeout: float = DEFAULT_TIMEOUT) -> dict:
        """A websocket frame matching the regular expression `pattern` (JavaScript syntax)
        was received ("in") or sent ("out"); returns it ({t, dir, text})."""
        return self.call("waitFrame", timeout, pattern=pattern, dir=direction,
                         since=since_ms)["frame"]

    def diagnostics(self) -> dict:
        return self.call("diagnostics")

    def close(self) -> None:
        self.call("closePage")
