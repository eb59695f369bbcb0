"""Composition root: builds the appliance from Settings, starts it, stops it.

Nothing here runs at import. `Appliance(settings)` wires the parts; `start()` opens the
store and listens; `stop()` drains under one deadline. Two appliances can live in one
process (the tests do that).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import tornado.httpserver
import tornado.netutil
import tornado.web

from . import __version__, admin, api, encryption_events, logs, sdnotify
from .auth import Identity, TokenVerifier
from .backends.factory import Backend, build_backend
from .channels import ChannelService
from .collab import attach as attach_collab
from .config import reload_diff
from .core.errors import StoreError
from .core.tasks import TaskGroup, every
from .direct_stream import DirectStream
from .directory import Directory
from .emitter import Emitter
from .encryption_delivery import SidDelivery
from .encryption_relay import SWEEP_INTERVAL, EncryptionRelay
from .engine.handler import route as engine_route
from .engine.server import EngineOptions
from .gateway import Gateway
from .identities import DirectoryIdentities
from .keyfiles import ensure_secret
from .ledger import DirectoryLedger
from .limits import Limits
from .metrics import Metrics
from .openwebui.link import OpenWebuiLink
from .presence import PresenceService
from .ratelimit import Buckets
from .relay import attach as attach_relay
from .rights import DirectoryRights
from .sio import SocketServer
from .typing_gate import TypingGate
from .usage import UsageService

log = logging.getLogger("rt.app")


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
        max_outbound_bytes=settings.limits.max_outbound_bytes,
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
        # python-socketio's loggers go through our handlers (given as objects: with a bool
        # it would add a stream handler of its own and print every line twice)
        protocol_log = logging.getLogger("rt.protocol")
        protocol_log.setLevel(logging.INFO if s.server.protocol_logging else logging.WARNING)
        self.sio = SocketServer(engine_options(s), client_manager=self.backend.client_manager,
                                logger=protocol_log, engineio_logger=protocol_log)
        self.emitter = Emitter(self.sio, self.backend.presence)
        self.presence = PresenceService(self.backend.presence, self.backend.store)
        self.usage = UsageService(self.backend.usage, self.emitter, s.limits.usage_ttl,
                                  s.server.broadcast_usage)
        self.typing = TypingGate(Buckets(s.limits.typing_per_second, s.limits.typing_burst))
        self.channels = ChannelService(self.emitter, self.typing)
        self.directory = Directory(self.backend.store, self.emitter)
        self.limits = Limits(s.limits)
        # who users are and what they may do: open-webui's API when [openwebui] url is
        # set, else the appliance's own directory (chosen here, nowhere else)
        self.openwebui = (OpenWebuiLink(s, self.verifier, self.backend.redis)
                          if s.openwebui.url else None)
        if self.openwebui is not None:
            source, rights, ledger = (self.openwebui.identities, self.openwebui.rights,
                                      self.openwebui.ledger)
        else:
            source = DirectoryIdentities(self.verifier, self.backend.store,
                                         s.auth.trust_token_claims)
            rights = DirectoryRights(self.backend.store)
            ledger = DirectoryLedger(self.backend.store,
                                     lambda: self.settings.limits.chat_reads_per_user)
        self.rights = rights
        self.gateway = Gateway(self.sio, self.verifier, source, rights, ledger, self.presence,
                               self.usage, self.channels, self.limits, self.typing,
                               (s.openwebui.unbound_per_ip, s.openwebui.unbound_max))
        self.gateway.register()
        self.gateway.direct_stream = DirectStream.for_backend(self.backend, s.state.key_prefix)
        self.tasks = TaskGroup()
        self.metrics = Metrics(self)
        self.recent_errors = admin.RecentErrors()
        # extra live gauges other services contribute: (name, help, callable → number)
        self.gauges: list[tuple[str, str, object]] = []
        bridge = self.backend.bridge  # python-socketio's pub/sub with open-webui (Redis)
        if self.openwebui is not None:
            self.gauges += self.openwebui.gauges()
            if bridge is not None:
                bridge.filters.append(self.openwebui.echoes.strip_echo)
                bridge.observers.append(self.openwebui.observer(
                    self.gateway.identities, lambda user_id: self.tasks.spawn(
                        "channel refresh", self.gateway.refresh_channels(user_id))))
        # encrypted channels (open-webui 0.12 DMs and private groups): who may take part
        # is open-webui's to say; the directory knows no such channels
        self.encryption = EncryptionRelay(
            self.sio, self.backend.encryption,
            may_join=self._may_encrypt if self.openwebui is not None else None,
            delivery=SidDelivery(self.sio, local=self.gateway.identities,
                                 presence=self.backend.presence,
                                 publish=bridge.publish if bridge is not None else None,
                                 host_id=bridge.host_id if bridge is not None else ""),
            protocol_logging=lambda: self.settings.server.protocol_logging)
        encryption_events.register(self.gateway, self.encryption)
        self.gauges.append(("rt_encryption_participants",
                            "Participants of encrypted channels on this node",
                            self.encryption.local_count))
        self.reload_hooks: list = []  # services that keep a copy of a reloadable setting
        if not self.backend.node_id:
            self.backend.node_id = f"{socket.gethostname()}-{os.getpid()}"
        self.node_id = self.backend.node_id
        self.web: tornado.web.Application | None = None
        self.relay = None  # the chat streaming relay, attached at start
        self.collab = None  # the collaborative documents (ydoc:*), attached at start
        self.http: tornado.httpserver.HTTPServer | None = None
        self.metrics_http: tornado.httpserver.HTTPServer | None = None
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
            observe=lambda handler, code: self.metrics.api_requests.labels(handler, code).inc(),
            check_api=self.limits.check_api,
        )
        self.api_ctx = ctx
        handlers = [engine_route(self.settings.server.socketio_path, self.sio.engine)]
        handlers += api.routes(ctx)
        handlers += admin.routes(self.metrics, lambda: self.settings.auth.api_key, self.status,
                                 with_metrics=not self.settings.server.metrics_listen)
        return tornado.web.Application(
            handlers, default_handler_class=api.NotFoundHandler,
            default_handler_args={"ctx": ctx}, compress_response=False,
            log_function=logs.log_request,
            websocket_max_message_size=self.settings.server.max_message_bytes,
        )

    async def _has_session(self, sid: str) -> bool:
        return await self.backend.presence.user_of(sid) is not None

    async def announce_dead_sessions(self) -> None:
        """Sessions of a node that died: handled here like a normal leave (usage entries
        dropped, services told through the disconnect hooks)."""
        for sid, user_id in await self.backend.dead_sessions():
            await self.usage.drop(sid)
            await self.gateway.ledger.gone(sid)  # open-webui's session pool entry
            user = await self.backend.store.get_user(user_id)
            identity = Identity(user_id, user.name if user else user_id,
                                user.role if user else "user")
            await self.gateway.run_disconnect_hooks(sid, identity)
            log.info("session %s of user %s ended with its node", sid, user_id)

    def extra_gauges(self):
        return [(name, help_, fn()) for name, help_, fn in self.gauges]

    async def status(self) -> dict:
        """What /admin shows: live figures of this node and of the cluster."""
        await self.metrics.refresh()
        snap = self.metrics.snapshot
        users = await self.backend.presence.users() if snap.get("store_up") else {}
        rooms = self.sio.manager.rooms.get("/", {})
        channels = sorted(
            ({"id": name[len("channel:"):], "members": len(members)}
             for name, members in rooms.items()
             if isinstance(name, str) and name.startswith("channel:")),
            key=lambda c: -c["members"])[:50]
        return {
            "time": time.time(),
            "version": __version__,
            "backend": self.backend.name,
            "node": self.node_id,
            "uptime": time.time() - (self.started_at or time.time()),
            "connections": dict(self.sio.engine.counts),
            "sessions": len(self.gateway.identities),
            "users": [{"id": uid, "sessions": n} for uid, n in sorted(users.items())][:200],
            "channels": channels,
            "documents": {"count": snap.get("documents", 0), "bytes": snap.get("documents_bytes", 0),
                          "open": self.open_documents()},
            "nodes": [{"id": node, "self": node == self.node_id}
                      for node in (await self.backend.nodes() if snap.get("store_up")
                                   else [self.node_id])],
            "health": {"store": bool(snap.get("store_up"))},
            "events": {"in": sum(self.gateway.events_in.values()),
                       "out": sum(self.emitter.counts.values())},
            "relay": self.relay.metrics() if self.relay is not None else {},
            "errors": list(self.recent_errors.items),
        }

    def open_documents(self) -> int:
        return self.collab.open_count() if self.collab is not None else 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        s = self.settings
        if self.verifier.short_secret:
            log.warning("secret_key is shorter than 64 bytes; use a long random secret")
        await self.backend.start()
        self.web = self.web_app()
        self.relay = attach_relay(self)
        self.collab = attach_collab(
            self, note_access=self._note_access,
            on_content=self.openwebui.content_hook(self.gateway.token_for)
            if self.openwebui is not None else None)
        self.http = NoDelayHTTPServer(
            self.web, xheaders=s.server.trust_proxy_headers,
            # the API's own limit (reloadable) is checked per request; this one bounds reads
            max_body_size=max(s.server.max_message_bytes, s.limits.api_max_body_bytes) + 65536,
            idle_connection_timeout=max(60.0, s.server.ping_interval + s.server.ping_timeout),
        )
        sockets = tornado.netutil.bind_sockets(s.server.port, s.server.host,
                                               family=socket.AF_UNSPEC)
        self.http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        if s.server.metrics_listen:
            host, _, port = s.server.metrics_listen.rpartition(":")
            self.metrics_http = tornado.httpserver.HTTPServer(tornado.web.Application(
                admin.routes(self.metrics, lambda: self.settings.auth.api_key, self.status)[-1:]))
            self.metrics_http.listen(int(port), host.strip("[]"))
        logging.getLogger("rt").addHandler(self.recent_errors)
        self.tasks.start("loop lag", self.metrics.sample_loop_lag())
        self.tasks.start("last-active flush", every(
            "last-active flush", s.state.last_active_flush_interval, self.presence.flush))
        self.tasks.start("usage sweep", every(
            "usage sweep", min(1.0, s.limits.usage_ttl / 3), self.usage.sweep))
        self.tasks.start("encryption sweep", every(
            "encryption sweep", SWEEP_INTERVAL, self.encryption.sweep))
        if self.openwebui is not None:
            # open-webui revokes tokens behind our back (sign-out, password change); in
            # directory mode the backend ends sessions itself through the API
            # (POST /api/v1/users/{id}/disconnect)
            self.tasks.start("re-verification", every(
                "re-verification", s.openwebui.reverify_interval, self._reverify))
            for name, work in self.openwebui.background():
                self.tasks.start(name, work)
        for loop in self.backend.loops:
            self.tasks.start(loop.name, every(loop.name, loop.interval, loop.step,
                                              max_backoff=loop.interval))
        if self.backend.dead_session_interval:
            self.tasks.start("dead sessions", every(
                "dead sessions", self.backend.dead_session_interval, self.announce_dead_sessions))
        self.started_at = time.time()
        self.announce(
            f"rt-appliance listening on http://{s.server.host}:{self.port}"
            f"{s.server.socketio_path} (state: {self.backend.name}, data: {s.state.data_dir})")
        sdnotify.ready(f"listening on {s.server.host}:{self.port}")
        watchdog = sdnotify.watchdog_interval()
        if watchdog:
            # pinged from the event loop: a hung loop stops the pings and systemd restarts us
            self.tasks.start("watchdog", every("watchdog", watchdog / 2, self._watchdog))

    async def _note_access(self, identity: Identity, note_id: str) -> str | None:
        return await self.rights.note_access(identity, self.gateway.token_for(identity.id),
                                             note_id)

    async def _may_encrypt(self, sid: str, identity: Identity, channel_id: str) -> bool:
        assert self.openwebui is not None
        return await self.openwebui.rights.may_encrypt(identity, self.gateway.tokens.get(sid),
                                                        channel_id)

    async def _reverify(self) -> None:
        await self.gateway.reverify()

    async def _watchdog(self) -> None:
        sdnotify.watchdog()

    async def stop(self) -> None:
        """Graceful stop, every step under one deadline (shutdown_timeout)."""
        deadline = self.settings.server.shutdown_timeout
        sdnotify.stopping(f"draining {len(self.gateway.identities)} sessions")
        try:
            await asyncio.wait_for(self._drain(), timeout=deadline)
        except TimeoutError:
            log.warning("graceful stop took longer than %.1f s; closing now", deadline)
        finally:
            await self.tasks.stop()
            await self.usage.close()  # a coalesced usage broadcast still pending
            await self.backend.stop()
            if self.metrics_http is not None:
                self.metrics_http.stop()
            logging.getLogger("rt").removeHandler(self.recent_errors)
        log.info("stopped")

    async def _drain(self) -> None:
        # 1. stop accepting new connections and requests
        if self.http is not None:
            self.http.stop()
        # 2. end running chat streams: each is stored, and its tabs and caller see the end
        if self.relay is not None:
            await self.relay.stop()
        # 3. tell clients, paced (drain_rate per second) so that they reconnect to other
        #    nodes spread over time rather than all in the same instant
        await self.drain_sessions(self.settings.server.drain_rate)
        await self.sio.engine.shutdown()
        await asyncio.sleep(0)  # let the close frames go out
        # 4. flush what is pending: coalesced last-active times (a store that cannot take
        #    them now is logged, never a reason to hang or fail the stop)
        try:
            await self.presence.flush()
        except StoreError as exc:
            log.error("last-active times not saved at stop: %s", exc)
        if self.collab is not None:
            await self.collab.close()  # the debounced rendered content of documents
        if self.openwebui is not None:
            # note contents still owed to open-webui, within what is left of the deadline
            await self.openwebui.close(deadline=2.0)
        # 5. close idle keep-alive HTTP connections (the store closes in stop())
        if self.http is not None:
            await self.http.close_all_connections()


    async def drain_sessions(self, rate: float) -> None:
        sids = list(self.gateway.identities)
        if not sids:
            return
        log.info("draining %d sessions at %s per second", len(sids), rate or "all")
        batch = max(1, int(rate / 20)) if rate > 0 else len(sids)  # 20 batches a second
        for i in range(0, len(sids), batch):
            for sid in sids[i:i + batch]:
                await self.sio.disconnect(sid)
            if rate > 0 and i + batch < len(sids):
                await asyncio.sleep(batch / rate)

    # ------------------------------------------------------------------ reload
    def reload(self, new) -> tuple[list[str], list[str]]:
        """Apply a re-read configuration (SIGHUP). Options that can change live take effect
        now (new connections get the new ping settings); the others keep their running
        value and are named so the operator knows a restart is needed."""
        new = resolve_secrets(new)
        applied, need_restart = reload_diff(self.settings, new)
        merged = self.settings
        for key in applied:
            section, name = key.split(".", 1)
            merged = merged.replace(section, name, new.value(section, name),
                                    new.source(section, name))
        self.settings = merged
        s = merged
        logs.set_level(s.log.level)
        self.sio.engine.options = engine_options(s)
        self.typing.buckets.rate = s.limits.typing_per_second
        self.typing.buckets.burst = s.limits.typing_burst
        self.usage.ttl = s.limits.usage_ttl
        self.limits.configure(s.limits)
        for hook in self.reload_hooks:
            hook(s)
        if applied:
            log.info("reloaded: %s", ", ".join(applied))
        if need_restart:
            log.warning("changed but not applied until restart: %s", ", ".join(need_restart))
        return applied, need_restart


def _read_key(path: str) -> str | None:
    if not path:
        return None
    with open(path) as fh:
        return fh.read()
