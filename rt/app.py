"""Composition root: builds the appliance from Settings, starts it, stops it.

Nothing here runs at import. `Appliance(settings)` wires the parts; `start()` opens the
store and listens; `stop()` drains under one deadline. Two appliances can live in one
process (the tests do that).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time

import tornado.httpserver
import tornado.netutil
import tornado.web

from . import api
from .auth import TokenVerifier
from .backends.factory import Backend, build_backend
from .channels import ChannelService
from .directory import Directory
from .emitter import Emitter
from .engine.handler import route as engine_route
from .engine.server import EngineOptions
from .gateway import Gateway
from .presence import PresenceService
from .ratelimit import Buckets
from .secrets import ensure_secret
from .sio import SocketServer
from .tasks import TaskGroup, every
from .usage import UsageService

log = logging.getLogger("rt.app")

API_MAX_BODY = 4 * 1024 * 1024


def engine_options(settings) -> EngineOptions:
    s = settings.server
    origins = tuple(s.cors_allow_origin)
    return EngineOptions(
        ping_interval=s.ping_interval,
        ping_timeout=s.ping_timeout,
        max_payload=s.max_message_bytes,
        allow_websocket=s.enable_websocket,
        cors_origins=None if "*" in origins else origins,
        compression=s.websocket_compression,
    )


def resolve_secrets(settings, announce=None):
    """Fill empty secret_key / api_key from files in the data dir, generated once."""
    for name, file in (("secret_key", "secret_key"), ("api_key", "api_key")):
        if getattr(settings.auth, name):
            continue
        value, path, created = ensure_secret(settings.state.data_dir, file)
        settings = settings.replace("auth", name, value, source=f"generated {path}")
        if announce is not None:
            announce(f"{'generated' if created else 'using'} {name} in {path} (mode 0600)")
    return settings


class NoDelayHTTPServer(tornado.httpserver.HTTPServer):
    """Every accepted connection gets TCP_NODELAY: without it small frames wait ~40 ms
    for the peer's delayed ACK (Nagle)."""

    def handle_stream(self, stream, address):
        stream.set_nodelay(True)
        return super().handle_stream(stream, address)


class Appliance:
    def __init__(self, settings, backend: Backend | None = None, announce=None):
        self.announce = announce or (lambda msg: log.info("%s", msg))
        self.settings = resolve_secrets(settings, self.announce)
        s = self.settings
        self.backend = backend or build_backend(s)
        self.verifier = TokenVerifier(
            s.auth.secret_key, tuple(s.auth.algorithms),
            _read_key(s.auth.public_key_file), s.auth.leeway)
        self.sio = SocketServer(engine_options(s), client_manager=self.backend.client_manager,
                                logger=s.server.protocol_logging,
                                engineio_logger=s.server.protocol_logging)
        self.emitter = Emitter(self.sio, self.backend.presence)
        self.presence = PresenceService(self.backend.presence, self.backend.store)
        self.usage = UsageService(self.backend.usage, self.emitter, s.limits.usage_ttl,
                                  s.server.broadcast_usage)
        self.channels = ChannelService(
            self.backend.store, self.emitter,
            Buckets(s.limits.typing_per_second, s.limits.typing_burst))
        self.directory = Directory(self.backend.store, self.emitter)
        self.gateway = Gateway(self.sio, self.verifier, self.backend.store, self.presence,
                               self.usage, self.channels, s.auth.trust_token_claims)
        self.gateway.register()
        self.tasks = TaskGroup()
        self.web: tornado.web.Application | None = None
        self.http: tornado.httpserver.HTTPServer | None = None
        self.port: int | None = None
        self.started_at: float | None = None

    # ------------------------------------------------------------------ wiring
    def web_app(self) -> tornado.web.Application:
        ctx = api.ApiContext(
            store=self.backend.store, emitter=self.emitter, directory=self.directory,
            presence=self.presence, usage=self.usage,
            api_key=lambda: self.settings.auth.api_key,
            call_timeout_max=lambda: self.settings.limits.call_timeout_max,
            ready=self.backend.ready,
            has_session=self._has_session,
        )
        handlers = [engine_route(self.settings.server.socketio_path, self.sio.engine)]
        handlers += api.routes(ctx)
        return tornado.web.Application(
            handlers, default_handler_class=api.NotFoundHandler,
            default_handler_args={"ctx": ctx}, compress_response=False,
            websocket_max_message_size=self.settings.server.max_message_bytes,
        )

    async def _has_session(self, sid: str) -> bool:
        return await self.backend.presence.user_of(sid) is not None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        s = self.settings
        if self.verifier.short_secret:
            log.warning("secret_key is shorter than 64 bytes; use a long random secret")
        await self.backend.start()
        self.web = self.web_app()
        self.http = NoDelayHTTPServer(
            self.web, xheaders=s.server.trust_proxy_headers,
            max_body_size=max(s.server.max_message_bytes, API_MAX_BODY) + 65536,
            idle_connection_timeout=max(60.0, s.server.ping_interval + s.server.ping_timeout),
        )
        sockets = tornado.netutil.bind_sockets(s.server.port, s.server.host,
                                               family=socket.AF_UNSPEC)
        self.http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self.tasks.start("last-active flush", every(
            "last-active flush", s.state.last_active_flush_interval, self.presence.flush))
        self.tasks.start("usage sweep", every(
            "usage sweep", min(1.0, s.limits.usage_ttl / 3), self.usage.sweep))
        self.started_at = time.time()
        self.announce(
            f"rt-appliance listening on http://{s.server.host}:{self.port}"
            f"{s.server.socketio_path} (state: {self.backend.name}, data: {s.state.data_dir})")

    async def stop(self) -> None:
        """Graceful stop, every step under one deadline (shutdown_timeout)."""
        deadline = self.settings.server.shutdown_timeout
        try:
            await asyncio.wait_for(self._drain(), timeout=deadline)
        except asyncio.TimeoutError:
            log.warning("graceful stop took longer than %.1f s; closing now", deadline)
        finally:
            await self.tasks.stop()
            await self.backend.stop()
        log.info("stopped")

    async def _drain(self) -> None:
        # 1. stop accepting new connections and requests
        if self.http is not None:
            self.http.stop()
        # 2. tell clients: a Socket.IO disconnect to every session, then close it
        for sid in list(self.gateway.identities):
            await self.sio.disconnect(sid)
        await self.sio.engine.shutdown()
        await asyncio.sleep(0)  # let the close frames go out
        # 3. flush what is pending: coalesced last-active times
        await self.presence.flush()
        # 4. close idle keep-alive HTTP connections (the store closes in stop())
        if self.http is not None:
            await self.http.close_all_connections()


def _read_key(path: str) -> str | None:
    if not path:
        return None
    with open(path) as fh:
        return fh.read()
