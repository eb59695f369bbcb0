"""Composition root: builds the appliance from Settings, starts it, stops it.

Nothing here runs at import. `Appliance(settings)` builds every service, every socket
feature and every HTTP route (the only place they are wired); `start()` opens the store
and listens; `stop()` drains under one deadline. Two appliances can live in one process
(the tests do that).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from . import admin, api, logs, rooms, sdnotify
from .auth import Identity, TokenVerifier
from .backends.factory import Backend, build_backend
from .channels.events import ChannelEvents
from .channels.service import ChannelService
from .chats.events import ChatEvents
from .config import reload_diff
from .core.errors import StoreError
from .core.tasks import TaskGroup, every
from .direct.service import DirectStream
from .directory import Directory, note_document_id
from .documents.events import DocumentEvents
from .documents.host_client import DocumentHost
from .documents.http import routes as document_routes
from .documents.service import CollabService
from .emitter import Emitter
from .encryption.delivery import SidDelivery
from .encryption.events import EncryptionEvents
from .encryption.service import SWEEP_INTERVAL, EncryptionRelay
from .engine.front_door import FrontDoor
from .engine.handler import route as engine_route
from .engine.server import EngineOptions
from .gateway import Gateway
from .http_server import ProxyAwareHTTPServer, ProxyTrust
from .identities import DirectoryIdentities, IdentitySource
from .keyfiles import resolve_secrets
from .ledger import DirectoryLedger, Ledger
from .limits import Limits
from .metrics import ClusterFigures, Figure, Figures, Metrics
from .openwebui.link import OpenWebuiLink
from .presence.events import PresenceEvents
from .presence.service import PresenceService
from .recovery.service import SYNC_INTERVAL, RecoveryService
from .recovery.service import build_state as build_recovery_state
from .relay.http import RelayContext
from .relay.http import routes as relay_routes
from .relay.service import RelayService
from .rights import DirectoryRights, Rights
from .sio import SocketServer
from .typing_gate import TypingGate
from .usage.events import UsageEvents
from .usage.service import UsageService
from .workers.role import WorkerRole
from .workers.worker import WorkerSide

log = logging.getLogger("rt.app")


def engine_options(settings: Any) -> EngineOptions:
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
        # every packet a session sends counts against its inbound budget; a budget below the
        # event limit would slow what the event limit is there to refuse
        inbound_rate=max(settings.limits.inbound_packets_per_second,
                         settings.limits.events_per_second),
        inbound_burst=max(settings.limits.inbound_packet_burst, settings.limits.events_burst),
        inbound_bytes_rate=settings.limits.inbound_bytes_per_second,
        inbound_bytes_burst=settings.limits.inbound_bytes_burst,
        flood_close_after=settings.limits.flood_close_after,
    )


def idle_timeout(settings: Any) -> float:
    """How long an HTTP connection may say nothing (at least a heartbeat's round)."""
    return max(60.0, settings.server.ping_interval + settings.server.ping_timeout)


class Appliance:
    def __init__(self, settings: Any, backend: Backend | None = None,
                 announce: Callable[[str], None] | None = None,
                 role: WorkerRole | None = None):
        """`role`: this process is one of the workers of `[server] workers` (told so by
        its supervisor), else None."""
        self.announce = announce or (lambda msg: log.info("%s", msg))
        self.settings = resolve_secrets(settings, self.announce)
        s = self.settings
        self.role = role
        self.backend = backend or build_backend(s, broker=role.broker if role else "")
        if not self.backend.node_id:
            self.backend.node_id = f"{socket.gethostname()}-{os.getpid()}"
        self.node_id = self.backend.node_id
        self.tasks = TaskGroup()
        self.verifier = TokenVerifier(
            s.auth.secret_key, tuple(s.auth.algorithms),
            _read_key(s.auth.public_key_file), s.auth.leeway)
        # python-socketio's loggers go through our handlers (given as objects: with a bool
        # it would add a stream handler of its own and print every line twice)
        protocol_log = logging.getLogger("rt.protocol")
        protocol_log.setLevel(logging.INFO if s.server.protocol_logging else logging.WARNING)
        self.sio = SocketServer(engine_options(s), client_manager=self.backend.client_manager,
                                logger=protocol_log, engineio_logger=protocol_log)
        self.limits = Limits(s.limits)
        # a new connection's plain websocket handshake, answered before Tornado
        self.proxy_trust = ProxyTrust(self._trusted_proxies)
        self.front_door = FrontDoor(self.sio.engine, s.server.socketio_path, self.proxy_trust,
                                    header_timeout=idle_timeout(s))
        self.emitter = Emitter(self.sio, self.backend.presence)
        self.presence = PresenceService(self.backend.presence, self.backend.store)
        self.usage = UsageService(self.backend.usage, self.emitter, s.limits.usage_ttl,
                                  s.server.broadcast_usage)
        self.typing = TypingGate(self.limits, self.tasks)
        self.directory = Directory(self.backend.store, self.emitter)

        # who users are and what they may do: open-webui's API when [openwebui] url is
        # set, else the appliance's own directory (chosen here, nowhere else)
        self.openwebui = (OpenWebuiLink(s, self.verifier, self.backend.redis)
                          if s.openwebui.url else None)
        source: IdentitySource
        rights: Rights
        ledger: Ledger
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

        # ---------------------------------------------------------------- socket features
        self.gateway = Gateway(self.sio, self.verifier, source, rights, ledger, self.presence,
                               self.usage, self.limits, self.typing, self.tasks,
                               (s.openwebui.unbound_per_ip, s.openwebui.unbound_max),
                               keep_tokens=self.openwebui is not None)
        self.channels = ChannelEvents(self.gateway, ChannelService(self.emitter, self.typing))
        self.document_host = DocumentHost()  # pycrdt's copies, in a process of its own
        self.documents = CollabService(
            self.emitter, self.backend.store, lambda: self.settings.documents,
            self.document_host, limits=self.limits, registry=self.backend.editors,
            note_access=self._note_access,
            on_content=(self.openwebui.content_hook(self.gateway.token_for)
                        if self.openwebui is not None else None),
            shared=self.backend.client_manager.multi_node)
        self.directory.note_hooks.append(self.documents.note_changed)
        if self.sio.manager.multi_node:
            # the editors of a note may be on any node (or worker): each re-decides its own
            manager, documents = self.sio.manager, self.documents

            async def tell_the_others(note_id: str, note: Any) -> None:
                await manager.publish_control("documents:note-changed", {"note_id": note_id})

            async def on_note_changed(payload: dict[str, Any]) -> None:
                if isinstance(payload.get("note_id"), str):
                    await documents.recheck_access(note_document_id(payload["note_id"]))

            self.directory.note_hooks.append(tell_the_others)
            manager.on_control("documents:note-changed", on_note_changed)
        bridge = self.backend.bridge  # python-socketio's pub/sub with open-webui (Redis)
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
        self.direct_stream = DirectStream.for_backend(self.backend, s.state.key_prefix)
        for feature in (PresenceEvents(self.gateway), self.channels, ChatEvents(self.gateway),
                        UsageEvents(self.gateway), DocumentEvents(self.gateway, self.documents),
                        EncryptionEvents(self.encryption)):
            self.gateway.add(feature)
        self.gateway.catch_alls.append(self.direct_stream.handle)
        # connection state recovery ([recovery]): sessions, rooms and missed events kept in
        # the backend's state, so that a tab recovers on any node
        self.recovery: RecoveryService | None = None
        if s.recovery.enabled:
            self.recovery = RecoveryService(
                self.sio, build_recovery_state(s, self.backend), self.node_id,
                window=s.recovery.max_disconnection,
                skip_user_agents=tuple(s.recovery.skip_user_agents.split()))
            self.recovery.gateway = self.gateway
            self.recovery.on_leave = self.gateway.leave
            self.gateway.recovery = self.sio.recovery = self.recovery
            if self.sio.manager.multi_node:
                self.sio.manager.on_control("recovery:emit", self.recovery.on_emit)
                self.sio.manager.on_control("recovery:takeover", self.recovery.on_takeover)
                self.sio.manager.on_control("recovery:answer", self.recovery.calls.on_answer)
            if bridge is not None:  # open-webui's emits and calls to recoverable sessions
                self.recovery.attach(bridge)
        if self.openwebui is not None and bridge is not None:
            bridge.filters.append(self.openwebui.echoes.strip_echo)
            bridge.observers.append(self.openwebui.observer(
                self.gateway.identities, lambda user_id: self.tasks.spawn(
                    "channel refresh", self.channels.refresh_channels(user_id))))

        # ---------------------------------------------------------------- HTTP features
        self.relay = RelayService(self.emitter, self.backend.store, lambda: self.settings.upstream)
        self.recent_errors = admin.RecentErrors()
        self.started_at: float | None = None
        self.metrics = Metrics(self._figure_sources(), self._cluster_figures,
                               backend=self.backend.name, started_at=lambda: self.started_at)
        self.api_ctx = api.ApiContext(
            store=self.backend.store, emitter=self.emitter, directory=self.directory,
            presence=self.presence, usage=self.usage,
            api_key=lambda: self.settings.auth.api_key,
            call_timeout_max=lambda: self.settings.limits.call_timeout_max,
            ready=self.backend.ready,
            has_session=self._has_session,
            observe=self.metrics.observe_request,
            check_api=self.limits.check_api,
        )
        # one of the workers of `[server] workers`: its sessions, the others' requests
        self.worker = (WorkerSide(role, self.sio.engine, self.metrics,
                                  s.server.ping_interval + s.server.ping_timeout)
                       if role is not None else None)
        self.web = self.web_app()
        self.http: tornado.httpserver.HTTPServer | None = None
        self.metrics_http: tornado.httpserver.HTTPServer | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ wiring
    def web_app(self, for_workers: bool = False) -> tornado.web.Application:
        """Every HTTP route of the appliance, in one list. `for_workers`: the app of the
        worker's own socket, where the others also ask for its figures (/metrics, even
        when `metrics_listen` moved them off the main listener)."""
        s = self.settings
        ctx = self.api_ctx
        handlers: list[Any] = [engine_route(s.server.socketio_path, self.sio.engine)]
        handlers += api.routes(ctx)
        handlers += document_routes(ctx, self.documents)
        handlers += relay_routes(self._relay_context())
        handlers += admin.routes(self.metrics, lambda: self.settings.auth.api_key, self.status,
                                 with_metrics=for_workers or not s.server.metrics_listen)
        return tornado.web.Application(
            handlers, default_handler_class=api.NotFoundHandler,
            default_handler_args={"ctx": ctx}, compress_response=False,
            log_function=logs.log_request,
            websocket_max_message_size=s.server.max_message_bytes,
        )

    def _relay_context(self) -> RelayContext:
        manager = self.sio.manager
        cancel_elsewhere = None
        if manager.multi_node:  # a cancel may reach another node than the one streaming
            relay = self.relay

            async def publish_cancel(message_id: str, owner: str | None) -> None:
                await manager.publish_control("relay:cancel",
                                              {"message_id": message_id, "user_id": owner})

            async def on_cancel(payload: dict[str, Any]) -> None:
                if isinstance(payload.get("message_id"), str):
                    await relay.cancel(payload["message_id"], payload.get("user_id"),
                                       reason="cancelled by request")

            manager.on_control("relay:cancel", on_cancel)
            cancel_elsewhere = publish_cancel
        return RelayContext(
            service=self.relay, store=self.backend.store, identify=self.gateway.identify,
            api_key=lambda: self.settings.auth.api_key, observe=self.metrics.observe_request,
            check_api=self.limits.check_api, cancel_elsewhere=cancel_elsewhere)

    def _figure_sources(self) -> list[Any]:
        """Every part that reports figures in /metrics and /admin (metrics.py)."""
        sources: list[Any] = [self.limits, self.sio, self.gateway, self.emitter,
                              self.documents, self.relay, self.encryption]
        if self.recovery is not None:
            sources.append(self.recovery)
        bridge = self.backend.bridge
        if bridge is not None:
            def pubsub() -> Iterator[Figure]:
                yield Figure("rt_openwebui_pubsub_messages", "Messages of open-webui's pub/sub "
                             "(python-socketio protocol), by what became of them",
                             dict(bridge.stats), label="result", counter=True)
                yield Figure("rt_openwebui_pubsub_channels",
                             "open-webui pub/sub channels subscribed", bridge.subscriptions)
            sources.append(Figures(pubsub))
        if self.openwebui is not None:
            sources.append(self.openwebui)
        sources.append(Figures(lambda: [Figure(
            "rt_front_door_connections", "New connections by what the front door did: "
            "adopted, passed on to Tornado, closed as silent", dict(self.front_door.counts),
            label="outcome", counter=True)]))
        return sources

    async def _cluster_figures(self) -> ClusterFigures:
        """The figures that need the store; reads only (backend.ready is read-only)."""
        await self.backend.ready()
        users = await self.backend.presence.users()
        documents, documents_bytes = await self.backend.store.document_stats()
        return ClusterFigures(store_up=True, users_online=len(users), documents=documents,
                              documents_bytes=documents_bytes)

    async def status(self) -> dict[str, Any]:
        """What /admin shows (admin.status, from explicit sources)."""
        return await admin.status(admin.StatusSources(
            metrics=self.metrics, backend=self.backend.name, node_id=self.node_id,
            started_at=lambda: self.started_at, users=self.backend.presence.users,
            nodes=self.backend.nodes, channels=self._channel_sizes,
            relay=self.relay.metrics, errors=self.recent_errors))

    def _channel_sizes(self) -> list[tuple[str, int]]:
        members = self.sio.manager.rooms.get("/", {})
        return [(parsed[1], len(sids)) for name, sids in members.items()
                if isinstance(name, str) and (parsed := rooms.parse(name)) is not None
                and parsed[0] == "channel"]

    async def _has_session(self, sid: str) -> bool:
        if await self.backend.presence.user_of(sid) is not None:
            return True
        # away but recoverable: a call waits for it (rt/recovery)
        return self.recovery is not None and await self.recovery.away(sid)

    async def announce_dead_sessions(self) -> None:
        """Sessions of a node that died: handled here like a normal leave (usage entries
        dropped, services told through the disconnect hooks)."""
        for sid, user_id in await self.backend.dead_sessions():
            await self.usage.drop(sid)
            user = await self.backend.store.get_user(user_id)
            identity = Identity(user_id, user.name if user else user_id,
                                user.role if user else "user")
            if self.recovery is not None and await self.recovery.dead(sid, identity):
                continue  # still recoverable: its leave waits for the window
            await self.gateway.ledger.gone(sid)  # open-webui's session pool entry
            await self.gateway.run_disconnect_hooks(sid, identity)
            log.info("session %s of user %s ended with its node", sid, user_id)

    async def _note_access(self, identity: Identity, note_id: str) -> str | None:
        return await self.rights.note_access(identity, self.gateway.token_for(identity.id),
                                             note_id)

    async def _may_encrypt(self, sid: str, identity: Identity, channel_id: str) -> bool:
        assert self.openwebui is not None
        return await self.openwebui.rights.may_encrypt(identity, self.gateway.tokens.get(sid),
                                                        channel_id)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        s = self.settings
        if self.verifier.short_secret:
            log.warning("secret_key is shorter than 64 bytes; use a long random secret")
        await self.backend.start()
        if self.recovery is not None:  # one node: what its previous run kept
            self.recovery.load_from(self._recovery_file())
        # the API's own limit (reloadable) is checked per request; this one bounds reads
        max_body = max(s.server.max_message_bytes, s.limits.api_max_body_bytes) + 65536
        idle = idle_timeout(s)
        self.http = ProxyAwareHTTPServer(self.web, max_body_size=max_body,
                                         idle_connection_timeout=idle)
        self.http.trust = self.proxy_trust
        self.http.front = self.front_door
        role = self.role
        sockets = (role.listening_sockets() if role is not None else  # bound by the supervisor
                   tornado.netutil.bind_sockets(s.server.port, s.server.host,
                                                family=socket.AF_UNSPEC))
        self.http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        if self.worker is not None:
            self.worker.listen(ProxyAwareHTTPServer(self.web_app(for_workers=True),
                                                    max_body_size=max_body,
                                                    idle_connection_timeout=idle))
        if s.server.metrics_listen:
            host, _, port = s.server.metrics_listen.rpartition(":")
            self.metrics_http = tornado.httpserver.HTTPServer(tornado.web.Application(
                admin.routes(self.metrics, lambda: self.settings.auth.api_key, self.status)[-1:]))
            # every worker listens on it too, and whichever answers gathers them all
            self.metrics_http.listen(int(port), host.strip("[]"),
                                     reuse_port=self.worker is not None)
        logging.getLogger("rt").addHandler(self.recent_errors)
        # started now so that the first join does not wait for it (else at first use)
        self.tasks.spawn("document host start", self.document_host.start())
        self.tasks.start("loop lag", self.metrics.sample_loop_lag())
        self.tasks.start("last-active flush", every(
            "last-active flush", s.state.last_active_flush_interval, self.presence.flush))
        self.tasks.start("usage sweep", every(
            "usage sweep", min(1.0, s.limits.usage_ttl / 3), self.usage.sweep))
        self.tasks.start("encryption sweep", every(
            "encryption sweep", SWEEP_INTERVAL, self.encryption.sweep))
        if self.recovery is not None:
            self.tasks.start("recovery sync", every(
                "recovery sync", SYNC_INTERVAL, self.recovery.sync))
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
        if role is not None:  # its supervisor says "listening" once every worker is ready
            self.announce(f"ready (pid {os.getpid()}, {self.backend.description})")
        else:
            self.announce(
                f"rt-appliance listening on http://{s.server.host}:{self.port}"
                f"{s.server.socketio_path} ({self.backend.description})")
        sdnotify.ready(f"listening on {s.server.host}:{self.port}")
        watchdog = sdnotify.watchdog_interval()
        if watchdog:
            # pinged from the event loop: a hung loop stops the pings and systemd restarts us
            self.tasks.start("watchdog", every("watchdog", watchdog / 2, self._watchdog))

    def _recovery_file(self) -> str:
        return os.path.join(self.settings.state.data_dir, "recovery-state.json")

    def _trusted_proxies(self) -> tuple[str, ...]:
        server = self.settings.server
        return ("*",) if server.trust_proxy_headers else tuple(server.forwarded_allow_ips)

    async def _reverify(self) -> None:
        await self.gateway.reverify()
        await self.documents.recheck_all()  # note rights as open-webui says them now

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
            if self.recovery is not None:
                await self.recovery.close()  # leaves due later: another node announces
                try:
                    self.recovery.save_to(self._recovery_file())  # one node: for its restart
                except OSError as exc:
                    log.warning("recovery state not kept for the next start: %s", exc)
            await self.documents.close()  # content still debounced if the drain timed out
            await self.document_host.close()
            await self.usage.close()  # a coalesced usage broadcast still pending
            await self.backend.stop()
            await self.sio.engine.tasks.stop()  # python-socketio's own background tasks
            if self.metrics_http is not None:
                self.metrics_http.stop()
            if self.worker is not None:
                await self.worker.close()
            logging.getLogger("rt").removeHandler(self.recent_errors)
        log.info("stopped")

    async def _drain(self) -> None:
        # 1. stop accepting new connections and requests
        if self.http is not None:
            self.http.stop()
        # 2. end running chat streams: each is stored, and its tabs and caller see the end
        await self.relay.stop()
        # 3. tell clients, paced (drain_rate per second) so that they reconnect to other
        #    nodes spread over time rather than all in the same instant
        await self.drain_sessions(self.settings.server.drain_rate)
        await self.sio.engine.shutdown()
        await asyncio.sleep(0)  # let the close frames go out
        # 4. flush what is pending: coalesced last-active times (a store that cannot take
        #    them now is logged, never a reason to hang or fail the stop), the debounced
        #    content of documents, note contents owed to open-webui
        try:
            await self.presence.flush()
        except StoreError as exc:
            log.error("last-active times not saved at stop: %s", exc)
        await self.documents.close()
        if self.openwebui is not None:
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
        recovery = self.recovery
        for i in range(0, len(sids), batch):
            for sid in sids[i:i + batch]:
                eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
                if recovery is not None and recovery.pid_of(sid) and eio_sid is not None:
                    # closed under the client, which reconnects to another node and
                    # recovers there (its record and missed events are kept)
                    recovery.drain([sid])
                    await self.sio.engine.disconnect(eio_sid)
                else:
                    await self.sio.disconnect(sid)
            if rate > 0 and i + batch < len(sids):
                await asyncio.sleep(batch / rate)

    # ------------------------------------------------------------------ reload
    def reload(self, new: Any) -> tuple[list[str], list[str]]:
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
        self.usage.ttl = s.limits.usage_ttl
        self.limits.configure(s.limits)
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
