"""What makes an appliance one of the workers of `[server] workers`, beside the backend
its supervisor's broker gives it (rt.backends.factory): sids that name it, requests for
the others' sessions passed on to them, theirs taken from them, and /metrics for all."""
from __future__ import annotations

import tornado.httpserver
import tornado.netutil

from ..engine.server import EngineServer
from ..http_server import ProxyAwareHTTPServer
from ..metrics import Metrics
from .gather import WorkerMetrics
from .role import WorkerRole
from .routing import HandoffReceiver, Siblings


class WorkerSide:
    def __init__(self, role: WorkerRole, engine: EngineServer, metrics: Metrics,
                 long_poll: float) -> None:
        """`long_poll`: the longest a poll may wait for data (ping interval + timeout)."""
        self.role = role
        engine.sid_prefix = f"{role.index}."
        # a passed-on long-poll waits as long as one of its own may, and then some
        self.siblings = Siblings(role, long_poll + 10)
        engine.siblings = self.siblings
        self.handoff = HandoffReceiver(engine, role.handoff_socket(role.index))
        metrics.gather = WorkerMetrics(role).gather
        metrics.sources.append(self.siblings)
        self.http: tornado.httpserver.HTTPServer | None = None

    def listen(self, server: ProxyAwareHTTPServer) -> None:
        """Serve what the other workers pass on, on this worker's Unix sockets; `server`
        serves the appliance's own routes (its proxy headers are believed: only the other
        workers can reach it)."""
        server.trust = lambda peer: True
        server.add_socket(tornado.netutil.bind_unix_socket(
            self.role.sibling_socket(self.role.index), mode=0o600))
        self.handoff.start()
        self.http = server

    async def close(self) -> None:
        self.handoff.close()
        if self.http is not None:
            self.http.stop()
            await self.http.close_all_connections()
