"""The websocket handshake of a new connection, without Tornado's HTTP machinery.

A client's connect is one HTTP request on a fresh TCP connection: `GET <socket.io path>
?EIO=4&transport=websocket` with the upgrade headers. For it Tornado builds an IOStream, an
HTTP connection, parsed headers, the proxy headers' view, a routed request handler and its
request, only for handler.py to take the socket back out again: about a third of the CPU of
a connect. Here the first bytes of every new connection are peeked at (MSG_PEEK: nothing is
consumed). A complete request of exactly that shape, one that handler.py would accept, is
answered here, and the socket goes straight to the websocket transport (`adopt_websocket`).
Anything else goes to Tornado untouched and is served as it always was: another path,
polling, the upgrade of a polling session, per-message compression, a request handler.py
would refuse, a head split over several packets. So every
refusal still comes from one place (handler.py), and this module knows only the plain
case, checked as strictly as handler.py checks it.
"""
from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from typing import Any

import tornado.netutil

from .handler import adopt_websocket, keep_headers
from .server import EngineServer
from .websocket import valid_key

# A browser's handshake is well under 2 KiB; cookies can make it longer (Tornado takes those).
PEEK_BYTES = 8192

# RFC 9110 token characters: a header name made of anything else goes to Tornado
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# control characters (a bare LF, NUL ...) anywhere in a line: Tornado decides what they mean
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_WHITESPACE = " \t"


class FrontDoor:
    """Takes each new connection of the HTTP server before Tornado does (http_server.py)."""

    def __init__(self, engine: EngineServer, path: str,
                 proxy_believed: Callable[[str], bool], header_timeout: float) -> None:
        self.engine = engine
        base = path.rstrip("/")
        self.paths = (base, base + "/")  # the route's `/?`
        self.proxy_believed = proxy_believed  # is this peer a proxy whose headers count
        # a connection that says nothing for this long is closed (Tornado's header timeout)
        self.header_timeout = header_timeout
        self.counts = {"adopted": 0, "passed": 0, "silent": 0}

    def take(self, sock: socket.socket, address: Any,
             pass_on: Callable[[], None]) -> None:
        """A new connection: adopt it or `pass_on` to Tornado, once its first bytes are in
        (mostly they are by the time it is accepted, as the listening sockets defer
        accepting until they are: then no waiting is set up at all)."""
        try:
            data = sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            loop = asyncio.get_running_loop()
            fd = sock.fileno()
            timer = loop.call_later(self.header_timeout, self._silent, loop, fd, sock)
            loop.add_reader(fd, self._readable, loop, fd, sock, address, pass_on, timer)
            return
        except OSError:  # reset already: Tornado sees to it
            return self._pass(pass_on)
        self._decide(sock, data, address, pass_on)

    def _silent(self, loop: asyncio.AbstractEventLoop, fd: int, sock: socket.socket) -> None:
        loop.remove_reader(fd)
        self.counts["silent"] += 1
        sock.close()

    def _pass(self, pass_on: Callable[[], None]) -> None:
        self.counts["passed"] += 1
        pass_on()

    def _readable(self, loop: asyncio.AbstractEventLoop, fd: int, sock: socket.socket,
                  address: Any, pass_on: Callable[[], None],
                  timer: asyncio.TimerHandle) -> None:
        loop.remove_reader(fd)
        timer.cancel()
        try:
            data = sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:  # reset already, or nothing after all: Tornado sees to it
            return self._pass(pass_on)
        self._decide(sock, data, address, pass_on)

    def _decide(self, sock: socket.socket, data: bytes, address: Any,
                pass_on: Callable[[], None]) -> None:
        plan = self.plan(data, address[0])
        if plan is None:
            return self._pass(pass_on)
        size, key, environ = plan
        try:
            sock.recv(size, socket.MSG_DONTWAIT)  # the head, peeked whole a moment ago
        except OSError:
            sock.close()
            return
        self.counts["adopted"] += 1
        self.engine.tasks.spawn("websocket handshake",
                                adopt_websocket(self.engine, sock, key, environ, None))

    def plan(self, data: bytes, peer: str) -> tuple[int, str, dict[str, Any]] | None:
        """(bytes of the head, Sec-WebSocket-Key, environ) for a request adopted here, None
        for one Tornado serves."""
        end = data.find(b"\r\n\r\n")
        options = self.engine.options
        if end < 0 or options.compression or not options.allow_websocket:
            return None
        lines = data[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1":
            return None
        path, _, query = parts[1].partition("?")
        if path not in self.paths or not _plain_new_websocket(query):
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or _TOKEN.fullmatch(name) is None or _CONTROL.search(line):
                return None
            name = name.lower()
            if name in headers:  # repeated: Tornado's joining rules decide
                return None
            headers[name] = value.strip(_WHITESPACE)
        if ("content-length" in headers or "transfer-encoding" in headers
                or headers.get("upgrade", "").lower() != "websocket"
                or "upgrade" not in {t.strip().lower()
                                     for t in headers.get("connection", "").split(",")}
                or headers.get("sec-websocket-version") != "13"
                or not options.origin_allowed(headers.get("origin"))):
            return None
        key = headers.get("sec-websocket-key", "")
        if not valid_key(key):
            return None
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
            "REMOTE_ADDR": self._remote_ip(peer, headers), "rt.transport": "websocket",
        }
        keep_headers(environ, lambda name: headers.get(name.lower()))
        return end + 4, key, environ

    def _remote_ip(self, peer: str, headers: dict[str, str]) -> str:
        """Tornado's `remote_ip` with xheaders (httpserver._apply_xheaders): the last address
        of X-Forwarded-For, or X-Real-IP, believed from a trusted proxy only."""
        forwarded, real = headers.get("x-forwarded-for"), headers.get("x-real-ip")
        if (forwarded is None and real is None) or not self.proxy_believed(peer):
            return peer
        ip = forwarded.split(",")[-1].strip() if forwarded is not None else peer
        if real is not None:
            ip = real
        return ip if tornado.netutil.is_valid_ip(ip) else peer


def _plain_new_websocket(query: str) -> bool:
    """EIO=4&transport=websocket, no sid, nothing escaped (Tornado parses anything else)."""
    if "%" in query or "+" in query:
        return False
    seen: dict[str, str] = {}
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name in seen:
            return False
        seen[name] = value
    return seen.get("EIO") == "4" and seen.get("transport") == "websocket" and "sid" not in seen
