"""Operator views: /metrics (Prometheus) and /admin (a live status page).

/admin and its JSON are behind the API key, given as `Authorization: Bearer <key>` or as the
password of HTTP Basic auth (any user name), so a browser can open the page and is asked for
it. /metrics needs no key (protocol §5.5); `[server] metrics_listen` moves it to a separate,
private address.
"""
from __future__ import annotations

import base64
import binascii
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import __version__
from .api import BaseHandler
from .auth import api_key_matches
from .metrics import CONTENT_TYPE, Metrics


class RecentErrors(logging.Handler):
    """The last warnings and errors of the `rt` loggers, for the status page."""

    def __init__(self, size: int = 50):
        super().__init__(logging.WARNING)
        self.items: collections.deque = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a broken log call must not break logging
            message = str(record.msg)
        self.items.append({"at": record.created, "level": record.levelname,
                           "logger": record.name, "message": message[:500]})


@dataclass
class StatusSources:
    """Where /admin's figures come from, handed over by the composition root. Every one
    only reads (an /admin poll never writes)."""

    metrics: Metrics
    backend: str
    node_id: str
    started_at: Callable[[], float | None]
    users: Callable[[], Awaitable[dict[str, int]]]  # cluster-wide: user → sessions
    nodes: Callable[[], Awaitable[list[str]]]
    channels: Callable[[], list[tuple[str, int]]]  # this node: (channel id, members)
    relay: Callable[[], dict[str, int]]
    errors: RecentErrors


async def status(src: StatusSources) -> dict[str, Any]:
    """What /admin shows: live figures of this node and of the cluster."""
    cluster = await src.metrics.refresh()
    values = src.metrics.values()

    def total(name: str) -> float:
        value = values.get(name, 0)
        return sum(value.values()) if isinstance(value, dict) else value

    users = await src.users() if cluster.store_up else {}
    nodes = await src.nodes() if cluster.store_up else [src.node_id]
    started = src.started_at()
    channels = sorted(src.channels(), key=lambda c: -c[1])[:50]
    return {
        "time": time.time(),
        "version": __version__,
        "backend": src.backend,
        "node": src.node_id,
        "uptime": time.time() - (started or time.time()),
        "connections": values.get("rt_connections", {}),
        "sessions": total("rt_sessions"),
        "users": [{"id": uid, "sessions": n} for uid, n in sorted(users.items())][:200],
        "channels": [{"id": cid, "members": n} for cid, n in channels],
        "documents": {"count": cluster.documents, "bytes": cluster.documents_bytes,
                      "open": total("rt_documents_open")},
        "nodes": [{"id": node, "self": node == src.node_id} for node in nodes],
        "health": {"store": cluster.store_up},
        "events": {"in": total("rt_events_in"), "out": total("rt_events_out")},
        "relay": src.relay(),
        "errors": list(src.errors.items),
    }


def admin_key_ok(expected: str, authorization: str | None) -> bool:
    if api_key_matches(expected, authorization):
        return True
    if not authorization or not authorization.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(authorization[6:], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    _user, _, password = decoded.partition(":")
    return api_key_matches(expected, f"Bearer {password}")


WORKER_LOCAL = "X-RT-Worker-Local"


class MetricsHandler(BaseHandler):
    def initialize(self, metrics: Metrics) -> None:  # type: ignore[override]
        self.metrics = metrics

    async def get(self) -> None:
        await self.metrics.refresh()
        self.set_header("Content-Type", CONTENT_TYPE)
        body = self.metrics.exposition()
        # workers: one view of them all, from whichever worker the scrape reached (the
        # header asks a worker for its own figures: the others ask so when gathering)
        if self.metrics.gather is not None and not self.request.headers.get(WORKER_LOCAL):
            body = await self.metrics.gather(body)
        self.finish(body)


class _AdminBase(BaseHandler):
    def initialize(self, api_key: Callable[[], str],  # type: ignore[override]
                   status: Callable[[], Awaitable[dict]]) -> None:
        self.api_key = api_key
        self.status = status

    def prepare(self) -> None:
        if not admin_key_ok(self.api_key(), self.request.headers.get("Authorization")):
            self.set_header("WWW-Authenticate", 'Basic realm="rt-appliance admin"')
            self.fail("unauthorized", "the API key is required (Bearer, or Basic password)", 401)


class AdminStatusHandler(_AdminBase):
    async def get(self) -> None:
        self.reply(await self.status())


class AdminPageHandler(_AdminBase):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        # the page only talks to its own origin
        self.set_header("Content-Security-Policy",
                        "default-src 'none'; script-src 'unsafe-inline'; "
                        "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:")
        self.finish(PAGE)


def routes(metrics: Metrics, api_key: Callable[[], str],
           status: Callable[[], Awaitable[dict]], with_metrics: bool = True) -> list[tuple]:
    admin = {"api_key": api_key, "status": status}
    out: list[tuple] = [
        (r"/admin/?", AdminPageHandler, admin),
        (r"/admin/status\.json", AdminStatusHandler, admin),
    ]
    if with_metrics:
        out.append((r"/metrics", MetricsHandler, {"metrics": metrics}))
    return out


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rt-appliance status</title>
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#0f172a;color:#e2e8f0}
 header{padding:12px 20px;background:#1e293b;display:flex;gap:24px;align-items:baseline}
 h1{font-size:18px;margin:0} .muted{color:#94a3b8}
 main{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:16px;padding:16px}
 section{background:#1e293b;border-radius:8px;padding:12px 16px}
 h2{font-size:13px;text-transform:uppercase;letter-spacing:.05em;color:#94a3b8;margin:0 0 8px}
 .big{font-size:28px;font-weight:600} .ok{color:#4ade80} .bad{color:#f87171}
 table{width:100%;border-collapse:collapse} td{padding:2px 4px;border-bottom:1px solid #334155}
 canvas{width:100%;height:160px}
</style></head><body>
<header><h1>rt-appliance</h1><span id="meta" class="muted">loading…</span></header>
<main>
 <section><h2>Connections</h2><div class="big" id="connections">–</div>
  <div class="muted" id="transports"></div></section>
 <section><h2>Events per second</h2><div class="big" id="eps">–</div>
  <div class="muted" id="totals"></div></section>
 <section><h2>Health</h2><table id="health"></table></section>
 <section style="grid-column:1/-1"><h2>Last minute</h2><canvas id="chart" width="900" height="160"></canvas>
  <div class="muted"><span style="color:#38bdf8">■</span> connections
   <span style="color:#f59e0b">■</span> events/s</div></section>
 <section><h2>Users online</h2><table id="users"></table></section>
 <section><h2>Channels (members connected here)</h2><table id="channels"></table></section>
 <section><h2>Documents</h2><table id="documents"></table></section>
 <section><h2>Cluster nodes</h2><table id="nodes"></table></section>
 <section style="grid-column:1/-1"><h2>Recent errors</h2><table id="errors"></table></section>
</main>
<script>
"use strict";
const hist = []; let last = null;
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const rows = (id, items, cells) => {
  document.getElementById(id).innerHTML = items.length
    ? items.map(i => "<tr>" + cells(i).map(c => "<td>" + esc(c) + "</td>").join("") + "</tr>").join("")
    : "<tr><td class='muted'>none</td></tr>";
};
function draw() {
  const c = document.getElementById("chart"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const series = [["connections", "#38bdf8"], ["eps", "#f59e0b"]];
  for (const [key, color] of series) {
    const max = Math.max(1, ...hist.map(h => h[key]));
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    hist.forEach((h, i) => {
      const x = i * (c.width / 59), y = c.height - 4 - (h[key] / max) * (c.height - 8);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
}
async function tick() {
  try {
    // next to the page whether it was opened as /admin or /admin/ (or under a proxy prefix)
    const url = location.pathname.replace(/\/?$/, "/") + "status.json";
    const r = await fetch(url, {credentials: "same-origin", cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    const events = s.events.in + s.events.out;
    const eps = last ? Math.max(0, (events - last.events) / Math.max(0.001, s.time - last.time)) : 0;
    last = {events, time: s.time};
    const conns = s.connections.polling + s.connections.websocket;
    hist.push({connections: conns, eps}); if (hist.length > 60) hist.shift();
    document.getElementById("meta").textContent =
      `v${s.version} · ${s.backend} · node ${s.node} · up ${Math.round(s.uptime)} s`;
    document.getElementById("connections").textContent = conns;
    document.getElementById("transports").textContent =
      `websocket ${s.connections.websocket} · polling ${s.connections.polling} · sessions ${s.sessions}`;
    document.getElementById("eps").textContent = eps.toFixed(1);
    document.getElementById("totals").textContent = `in ${s.events.in} · out ${s.events.out} total`;
    rows("health", Object.entries(s.health), ([k, v]) => [k, v ? "ok" : "DOWN"]);
    document.querySelectorAll("#health td:nth-child(2)").forEach(td =>
      td.className = td.textContent === "ok" ? "ok" : "bad");
    rows("users", s.users, u => [u.id, u.sessions + " session(s)"]);
    rows("channels", s.channels, c => [c.id, c.members]);
    rows("documents", [s.documents], d => [d.count + " stored", d.bytes + " bytes", d.open + " open"]);
    rows("nodes", s.nodes, n => [n.id, n.self ? "this node" : ""]);
    rows("errors", s.errors.slice().reverse(), e =>
      [new Date(e.at * 1000).toLocaleTimeString(), e.level, e.logger, e.message]);
    draw();
    document.body.dataset.updates = String((+document.body.dataset.updates || 0) + 1);
  } catch (e) {
    document.getElementById("meta").textContent = "status unavailable: " + e.message;
  }
}
tick(); setInterval(tick, 1000);
</script></body></html>
"""
