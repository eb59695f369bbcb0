"""Prometheus metrics of one appliance, on its own registry (two appliances in one process
do not share counters).

Live figures (connections, users, documents, store state) are read at scrape time:
`refresh()` gathers the ones that need the store or Redis, then the collector reports them.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .app import Appliance

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, appliance: Appliance):
        self.appliance = appliance
        self.registry = CollectorRegistry(auto_describe=False)
        self.api_requests = Counter(
            "rt_api_requests", "HTTP API requests by handler and status code",
            ["handler", "code"], registry=self.registry)
        self.loop_lag = Gauge(
            "rt_event_loop_lag_seconds", "How late the event loop ran a timer, last sample",
            registry=self.registry)
        self.snapshot: dict[str, Any] = {}
        self.registry.register(_Live(self))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu, fds

    async def refresh(self) -> None:
        """Figures that need an await: cluster-wide users, store state, documents."""
        app = self.appliance
        snap: dict[str, Any] = {}
        try:
            await asyncio.wait_for(app.backend.ready(), 5)
            snap["store_up"] = 1
        except Exception:  # any failure: the store is down for the operator
            snap["store_up"] = 0
        if snap["store_up"]:
            try:
                users = await app.backend.presence.users()
                snap["users_online"] = len(users)
                snap["documents"], snap["documents_bytes"] = await app.backend.store.document_stats()
            except Exception:
                snap["store_up"] = 0
        self.snapshot = snap

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def sample_loop_lag(self, interval: float = 0.5) -> None:
        """Runs until cancelled: how much later than asked a sleep wakes up."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.set(max(0.0, loop.time() - start - interval))


class _Live:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        app = self.metrics.appliance
        snap = self.metrics.snapshot
        engine = app.sio.engine

        conns = GaugeMetricFamily("rt_connections", "Engine.IO sessions on this node",
                                  labels=["transport"])
        for transport, count in sorted(engine.counts.items()):
            conns.add_metric([transport], count)
        yield conns
        yield GaugeMetricFamily("rt_sessions", "Authenticated Socket.IO sessions on this node",
                                value=len(app.gateway.identities))
        yield GaugeMetricFamily("rt_users_online", "Users with a live session (cluster-wide)",
                                value=snap.get("users_online", 0))
        rooms = app.sio.manager.rooms.get("/", {})
        yield GaugeMetricFamily("rt_rooms", "Socket.IO rooms with members on this node",
                                value=len(rooms))
        yield _counter("rt_events_in", "Client events received, by event name", "event",
                       app.gateway.events_in)
        yield _counter("rt_events_out", "Events emitted (once per emit, not per recipient)",
                       "event", app.emitter.counts)
        yield _counter("rt_errors", "Refused or failed client events and connects, by code",
                       "code", app.gateway.errors)
        yield _counter("rt_limited", "Requests refused (or typing events coalesced) by a "
                       "limit, by limit name", "limit",
                       {**app.limits.refused, "outbound_bytes": app.sio.engine.slow_consumers,
                        "typing": app.typing.coalesced})
        if app.backend.bridge is not None:
            yield _counter("rt_openwebui_pubsub_messages", "Messages of open-webui's pub/sub "
                           "(python-socketio protocol), by what became of them", "result",
                           app.backend.bridge.stats)
            yield GaugeMetricFamily("rt_openwebui_pubsub_channels",
                                    "open-webui pub/sub channels subscribed",
                                    value=app.backend.bridge.subscriptions)
        yield GaugeMetricFamily("rt_store_up", "1 when the store (SQLite or Redis) answers",
                                value=snap.get("store_up", 0))
        yield GaugeMetricFamily("rt_documents", "Stored Yjs documents",
                                value=snap.get("documents", 0))
        yield GaugeMetricFamily("rt_documents_bytes", "Bytes of stored Yjs documents",
                                value=snap.get("documents_bytes", 0))
        yield GaugeMetricFamily("rt_tasks", "asyncio tasks alive in this process",
                                value=len(asyncio.all_tasks()))
        for name, help_, value in app.extra_gauges():
            yield GaugeMetricFamily(name, help_, value=value)
        info = GaugeMetricFamily("rt_build_info", "Version and state backend",
                                 labels=["version", "backend"])
        info.add_metric([__version__, app.backend.name], 1)
        yield info
        if app.started_at:
            yield GaugeMetricFamily("rt_uptime_seconds", "Seconds since start",
                                    value=time.time() - app.started_at)


def _counter(name: str, help_: str, label: str, values: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_, labels=[label])
    for key, count in sorted(values.items()):
        family.add_metric([key], count)
    return family
