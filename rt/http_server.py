"""The appliance's HTTP server: Tornado's, with TCP_NODELAY and believed proxy headers."""
from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import tornado.httpserver


class ProxyAwareHTTPServer(tornado.httpserver.HTTPServer):
    """Every accepted connection gets TCP_NODELAY: without it small frames wait ~40 ms
    for the peer's delayed ACK (Nagle). X-Forwarded-For / X-Real-IP are believed only
    from the proxies of `[server] forwarded_allow_ips` (nginx on the same box by default),
    so that behind nginx every browser counts under its own address while a client that
    connects directly cannot claim one."""

    # (Tornado builds its servers through `initialize`; the owner sets this afterwards)
    trusted: Callable[[], tuple[str, ...]] = staticmethod(lambda: ())

    def handle_stream(self, stream: Any, address: Any) -> None:
        stream.set_nodelay(True)
        super().handle_stream(stream, address)

    def start_request(self, server_conn: Any, request_conn: Any) -> Any:
        # Tornado reads the headers of a request when `xheaders` is set as the request
        # starts; it is set here per request, from the address of the peer (one thread)
        self.xheaders = proxy_trusted(self.trusted(), getattr(request_conn.context,
                                                              "remote_ip", ""))
        return super().start_request(server_conn, request_conn)


def proxy_trusted(allowed: tuple[str, ...], peer: str) -> bool:
    if "*" in allowed:
        return True
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:  # a unix socket: only a local proxy can be on the other end
        return bool(allowed)
    return any(address in ipaddress.ip_network(net, strict=False) for net in allowed)
