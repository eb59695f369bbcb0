"""Requests for a session that reached another worker than the one holding it.

Every sid starts with its worker's index ("1.xyz..."). A websocket client needs no
routing: its one connection stays with the worker that accepted it. A polling client
sends each request on whatever connection it has, and the kernel gives connections to
any worker (a browser's, or a proxy's, keep-alive connection even carries the requests of
several sessions), so routing is per request:

- a polling GET or POST is passed on, over the owner's Unix socket (`worker-<i>.sock`),
  and its answer sent back; when the client goes away the passed-on request is closed too,
  so that the owner puts a long-poll's packets back for the next poll, as it does for its
  own clients;
- a websocket upgrading a polling session is handed over whole: its socket is sent to the
  owner (SCM_RIGHTS over `worker-<i>.handoff`) with what the handshake needs, and the owner
  answers it and serves it as if it had accepted it. No byte of it goes through this worker
  afterwards.
"""
from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Iterator
from typing import Any

import orjson
import tornado.httputil
import tornado.iostream

from ..engine.handler import adopt_handed_over
from ..engine.protocol import HandshakeError
from ..engine.server import EngineServer
from ..metrics import Figure
from .role import WorkerRole

log = logging.getLogger("rt.conn")

# what the owner's answer may carry back; hop-by-hop headers are this connection's own
_DROPPED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                      "date", "server"})
_HOP_BY_HOP = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive"})
_HANDOFF_MAX = 64 * 1024  # one handshake's environ: a few hundred bytes, never this


def owner_of(sid: str) -> int | None:
    """The index of the worker holding `sid`, None for a sid without one."""
    index, dot, _rest = sid.partition(".")
    if not dot or not index.isdigit():
        return None
    return int(index)


class Siblings:
    """engine.contracts.Siblings for the worker `role`."""

    def __init__(self, role: WorkerRole, timeout: float) -> None:
        self.role = role
        self.timeout = timeout  # a long-poll's longest wait, and then some
        self.forwarded = 0
        self.handed_off = 0

    def figures(self) -> Iterator[Figure]:
        yield Figure("rt_worker_passed_on", "Requests for another worker's session passed on "
                     "to it, by kind (polling requests, websockets handed over)",
                     {"polling": self.forwarded, "websocket": self.handed_off}, label="kind",
                     counter=True)

    def elsewhere(self, sid: str) -> bool:
        index = owner_of(sid)
        return index is not None and index != self.role.index and index < self.role.count

    async def forward(self, request: Any, closed: Awaitable[None]
                      ) -> tuple[int, list[tuple[str, str]], bytes]:
        sid = (request.query_arguments.get("sid") or [b""])[0].decode("latin-1")
        index = owner_of(sid)
        assert index is not None
        headers = [(name, value) for name, value in request.headers.get_all()
                   if name.lower() != "x-forwarded-for"]  # the owner believes this worker
        headers.append(("X-Forwarded-For", request.remote_ip or ""))
        self.forwarded += 1
        exchange = asyncio.ensure_future(ask(self.role.sibling_socket(index), request.method,
                                             request.uri, headers, request.body or b""))
        gone = asyncio.ensure_future(closed)
        try:
            done, _ = await asyncio.wait({exchange, gone}, timeout=self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if exchange in done:
                return exchange.result()
            raise HandshakeError(HandshakeError.BAD_REQUEST)  # client gone, or no answer
        except OSError:
            # the owner is gone (restarting): its sessions went with it
            raise HandshakeError(HandshakeError.UNKNOWN_SID) from None
        finally:
            gone.cancel()
            if not exchange.done():
                exchange.cancel()  # closes the connection: the owner sees its poll go
            with contextlib.suppress(BaseException):
                await exchange

    def hand_off(self, sid: str, sock: socket.socket, key: str, environ: dict[str, Any]) -> None:
        index = owner_of(sid)
        assert index is not None
        message = orjson.dumps({"sid": sid, "key": key, "environ": environ})
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
                out.setblocking(False)
                out.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         array.array("i", [sock.fileno()]))],
                           0, self.role.handoff_socket(index))
            self.handed_off += 1
        except OSError as exc:
            # the owner is gone (restarting): the client falls back to polling, which
            # finds the session gone and reconnects
            log.info("websocket of %s not handed to worker %d: %s", sid, index, exc)
        finally:
            sock.close()  # the owner holds its own copy now


async def ask(path: str, method: str, uri: str, headers: list[tuple[str, str]],
              body: bytes = b"") -> tuple[int, list[tuple[str, str]], bytes]:
    """One HTTP request to a worker's Unix socket: (status, headers, body). OSError when
    the worker cannot be reached; cancelling closes the connection."""
    stream = tornado.iostream.IOStream(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    try:
        try:
            await stream.connect(path)
            head = [f"{method} {uri} HTTP/1.1"]
            head += [f"{name}: {value}" for name, value in headers
                     if name.lower() not in _HOP_BY_HOP]
            if not any(name.lower() == "host" for name, _ in headers):
                head.append("Host: localhost")  # HTTP/1.1 requires one
            head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
            await stream.write("\r\n".join(head).encode("latin-1") + body)
            answer = await stream.read_until_close()
        except tornado.iostream.StreamClosedError as exc:
            raise OSError(f"worker at {path}: {exc.real_error or 'closed'}") from None
    finally:
        stream.close()
    start, _, rest = answer.partition(b"\r\n\r\n")
    first, _, header_text = start.decode("latin-1").partition("\r\n")
    try:
        status = tornado.httputil.parse_response_start_line(first).code
    except tornado.httputil.HTTPInputError:
        raise OSError(f"worker at {path}: no HTTP answer") from None
    parsed = tornado.httputil.HTTPHeaders.parse(header_text)
    kept = [(name, value) for name, value in parsed.get_all() if name.lower() not in _DROPPED]
    return status, kept, rest


class HandoffReceiver:
    """Takes the websockets other workers hand to this one (`worker-<i>.handoff`)."""

    def __init__(self, engine: EngineServer, path: str) -> None:
        self.engine = engine
        self.path = path
        self.sock: socket.socket | None = None
        self.adopted = 0

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a worker of this index that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.path)
        sock.setblocking(False)
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._receive)

    def _receive(self) -> None:
        assert self.sock is not None
        while True:
            try:
                message, fds, _flags, _addr = socket.recv_fds(self.sock, _HANDOFF_MAX, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("handed-over websocket not received: %s", exc)
                return
            conns = [socket.socket(fileno=fd) for fd in fds]
            try:
                request = orjson.loads(message)
                sid, key, environ = request["sid"], request["key"], request["environ"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                for conn in conns:
                    conn.close()
                continue
            for extra in conns[1:]:
                extra.close()
            if not conns:
                continue
            self.engine.tasks.spawn("handed-over websocket",
                                    adopt_handed_over(self.engine, conns[0], key, environ, sid))
            self.adopted += 1

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
