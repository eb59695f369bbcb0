"""The appliance's HTTP server: Tornado's, with TCP_NODELAY, believed proxy headers and a
front door for websocket handshakes."""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import tornado.httpserver

from .engine.front_door import FrontDoor

# peers remembered with their verdict, per list of trusted proxies (a few proxies and the
# addresses of the clients that connect directly: bounded, cleared when full)
_VERDICTS_KEPT = 4096


class ProxyAwareHTTPServer(tornado.httpserver.HTTPServer):
    """Every accepted connection gets TCP_NODELAY: without it small frames wait ~40 ms
    for the peer's delayed ACK (Nagle). X-Forwarded-For / X-Real-IP are believed only
    from the proxies of `[server] forwarded_allow_ips` (nginx on the same box by default),
    so that behind nginx every browser counts under its own address while a client that
    connects directly cannot claim one. With a `front` door, each new TCP connection is
    offered to it first (engine/front_door.py), and reaches Tornado only if it declines."""

    # (Tornado builds its servers through `initialize`; the owner sets these afterwards)
    trust: Callable[[str], bool] = staticmethod(lambda peer: False)
    front: FrontDoor | None = None

    def add_sockets(self, sockets: Any) -> None:
        sockets = list(sockets)
        if self.front is not None:
            # a connection is accepted once its first bytes are in (or after a second
            # without any), so the front door mostly reads the request at once instead of
            # waiting for it with a reader and a timer of its own; nginx's `deferred`
            for sock in sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        super().add_sockets(sockets)

    def _handle_connection(self, connection: socket.socket, address: Any) -> None:
        # Tornado's accept loop hands every accepted socket to this method
        front = self.front
        if front is None or not isinstance(address, tuple):
            super()._handle_connection(connection, address)
            return
        # (TCP_NODELAY: set by the websocket transport, or by handle_stream for Tornado)
        front.take(connection, address,
                   lambda: super(ProxyAwareHTTPServer, self)._handle_connection(
                       connection, address))

    def handle_stream(self, stream: Any, address: Any) -> None:
        stream.set_nodelay(True)
        # Tornado turns Nagle back on after every response (and off again as the next one
        # finishes): a response streamed on a reused connection (nginx's upstream
        # keepalive: relay streams, SSE) would wait for the peer's delayed ACK between its
        # chunks, and each request cost two more system calls. It stays off.
        stream.set_nodelay = _nodelay_kept
        super().handle_stream(stream, address)

    def start_request(self, server_conn: Any, request_conn: Any) -> Any:
        # Tornado reads the headers of a request when `xheaders` is set as the request
        # starts; it is set here per request, from the address of the peer (one thread)
        self.xheaders = self.trust(getattr(request_conn.context, "remote_ip", ""))
        return super().start_request(server_conn, request_conn)


def _nodelay_kept(value: bool) -> None:
    """A stream's `set_nodelay` once TCP_NODELAY is on for good (handle_stream)."""


class ProxyTrust:
    """Whether a peer is one of the trusted proxies of `trusted()` (reloadable). The verdict
    is kept per peer: parsing the address and the networks on every request cost more
    than the rest of the request's proxy handling."""

    def __init__(self, trusted: Callable[[], tuple[str, ...]]) -> None:
        self.trusted = trusted
        self._verdicts: tuple[tuple[str, ...], dict[str, bool]] = ((), {})

    def __call__(self, peer: str) -> bool:
        allowed = self.trusted()
        kept, verdicts = self._verdicts
        if kept != allowed or len(verdicts) >= _VERDICTS_KEPT:  # reloaded, or full
            verdicts = {}
            self._verdicts = (allowed, verdicts)
        verdict = verdicts.get(peer)
        if verdict is None:
            verdict = verdicts[peer] = proxy_trusted(allowed, peer)
        return verdict


def proxy_trusted(allowed: tuple[str, ...], peer: str) -> bool:
    if "*" in allowed:
        return True
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:  # a unix socket: only a local proxy can be on the other end
        return bool(allowed)
    return any(address in ipaddress.ip_network(net, strict=False) for net in allowed)
