"""Prometheus metrics of one appliance, on its own registry (two appliances in one process
do not share counters).

Every figure comes from an explicit source handed over by the composition root: an object
whose `figures()` yields `Figure`s (the gateway, the emitter, the limits, each feature's
service), read at scrape time without an await. The few figures that need the store or
Redis (users online cluster-wide, stored documents, whether the store answers) come from
one coroutine, `cluster()`, which only reads: a scrape or an /admin poll never writes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import __version__

log = logging.getLogger("rt.app")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CLUSTER_TIMEOUT = 5.0  # seconds a scrape waits for the store before reporting it down


@dataclass(frozen=True)
class Figure:
    """One metric family: a single value, or one value per label value (`label` names it).
    Figures of the same name from several sources are one family (their values merged)."""

    name: str
    help: str
    value: float | Mapping[str, float]
    label: str = ""
    counter: bool = False


class FigureSource(Protocol):
    def figures(self) -> Iterable[Figure]: ...


class Figures:
    """A source made of a function, for a part that keeps its counts in plain attributes
    (the pub/sub bridge, open-webui's link)."""

    def __init__(self, read: Callable[[], Iterable[Figure]]):
        self.figures = read


@dataclass(frozen=True)
class ClusterFigures:
    store_up: bool
    users_online: int = 0
    documents: int = 0
    documents_bytes: int = 0


class Metrics:
    def __init__(self, sources: Sequence[FigureSource],
                 cluster: Callable[[], Awaitable[ClusterFigures]],
                 backend: str, started_at: Callable[[], float | None]):
        self.sources = list(sources)
        self.cluster = cluster
        self.backend = backend
        self.started_at = started_at
        self.registry = CollectorRegistry(auto_describe=False)
        self.api_requests = Counter(
            "rt_api_requests", "HTTP API requests by handler and status code",
            ["handler", "code"], registry=self.registry)
        self.loop_lag = Gauge(
            "rt_event_loop_lag_seconds", "How late the event loop ran a timer, last sample",
            registry=self.registry)
        self.snapshot = ClusterFigures(store_up=False)
        # with workers: this worker's exposition in, every worker's figures out
        # (rt.workers.gather); None for one process
        self.gather: Callable[[bytes], Awaitable[bytes]] | None = None
        self.registry.register(_Live(self))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu, fds

    async def refresh(self) -> ClusterFigures:
        """Read the cluster-wide figures (bounded wait); a store that fails is reported down
        and logged, once per scrape."""
        try:
            self.snapshot = await asyncio.wait_for(self.cluster(), CLUSTER_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("metrics: the store did not answer: %s",
                        str(exc) or type(exc).__name__)
            self.snapshot = ClusterFigures(store_up=False)
        return self.snapshot

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def observe_request(self, handler: str, code: int) -> None:
        self.api_requests.labels(handler, code).inc()

    async def sample_loop_lag(self, interval: float = 0.5) -> None:
        """Runs until cancelled: how much later than asked a sleep wakes up."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.set(max(0.0, loop.time() - start - interval))

    def figures(self) -> Iterator[Figure]:
        """Every source's figures, then the cluster's and the process's."""
        for source in self.sources:
            yield from source.figures()
        snap = self.snapshot
        yield Figure("rt_store_up", "1 when the store (SQLite or Redis) answers",
                     int(snap.store_up))
        yield Figure("rt_users_online", "Users with a live session (cluster-wide)",
                     snap.users_online)
        yield Figure("rt_documents", "Stored Yjs documents", snap.documents)
        yield Figure("rt_documents_bytes", "Bytes of stored Yjs documents", snap.documents_bytes)
        yield Figure("rt_tasks", "asyncio tasks alive in this process", len(asyncio.all_tasks()))
        started = self.started_at()
        if started:
            yield Figure("rt_uptime_seconds", "Seconds since start", time.time() - started)

    def values(self) -> dict[str, float | dict[str, float]]:
        """Every figure by name (merged), for /admin."""
        return {name: value for name, (_, value) in _merged(self.figures()).items()}


class _Live:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for name, (figure, value) in _merged(self.metrics.figures()).items():
            family: Metric
            if isinstance(value, dict):
                kind = CounterMetricFamily if figure.counter else GaugeMetricFamily
                family = kind(name, figure.help, labels=[figure.label])
                for key, count in sorted(value.items()):
                    family.add_metric([key], count)
            elif figure.counter:
                family = CounterMetricFamily(name, figure.help, value=value)
            else:
                family = GaugeMetricFamily(name, figure.help, value=value)
            yield family
        info = GaugeMetricFamily("rt_build_info", "Version and state backend",
                                 labels=["version", "backend"])
        info.add_metric([__version__, self.metrics.backend], 1)
        yield info


def _merged(figures: Iterable[Figure]) -> dict[str, tuple[Figure, float | dict[str, float]]]:
    out: dict[str, tuple[Figure, float | dict[str, float]]] = {}
    for figure in figures:
        value = dict(figure.value) if isinstance(figure.value, Mapping) else figure.value
        seen = out.get(figure.name)
        if seen is None:
            out[figure.name] = (figure, value)
        elif isinstance(seen[1], dict) and isinstance(value, dict):
            merged = dict(seen[1])
            for key, count in value.items():
                merged[key] = merged.get(key, 0) + count
            out[figure.name] = (seen[0], merged)
        else:
            raise ValueError(f"figure {figure.name} given twice")
    return out
