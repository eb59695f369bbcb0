"""One /metrics for all the workers: whichever worker a scrape reaches asks the others for
their own figures (`LOCAL_HEADER`) over their Unix sockets and merges them with its own.

Counters and per-process gauges add up (connections, events, memory, CPU). A few figures
are the same whole in every worker, and adding them would multiply them: the cluster-wide
ones (their help says "cluster-wide"), what is stored (documents), whether the store
answers (the worst worker's word), how late a loop runs (the latest), how long it has run.
`rt_workers` says how many workers answered, so a scrape during a worker's restart is
seen as partial rather than as a drop in traffic.
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from ..admin import WORKER_LOCAL as LOCAL_HEADER  # "this worker's figures only"
from .role import WorkerRole
from .routing import ask

log = logging.getLogger("rt.app")

ASK_TIMEOUT = 2.0

_LOWEST = frozenset({"rt_store_up", "process_start_time_seconds"})
_HIGHEST = frozenset({"rt_documents", "rt_documents_bytes", "rt_event_loop_lag_seconds",
                      "rt_uptime_seconds", "rt_build_info", "process_max_fds"})


def _combine(family: str, help_text: str, values: list[float]) -> float:
    if family in _LOWEST:
        return min(values)
    if family in _HIGHEST or "cluster-wide" in help_text:
        return max(values)
    return math.fsum(values)


def merge(expositions: Iterable[bytes]) -> bytes:
    """The Prometheus text format of several workers, as one."""
    families: dict[str, tuple[str, str]] = {}  # name -> (type, help), first seen order
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    count = 0
    for text in expositions:
        count += 1
        for family in text_string_to_metric_families(text.decode("utf-8")):
            families.setdefault(family.name, (family.type, family.documentation))
            by_sample = samples.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                by_sample.setdefault(key, []).append(sample.value)
    out = [f"# HELP rt_workers Worker processes whose figures this is\n"
           f"# TYPE rt_workers gauge\nrt_workers {count}.0"]
    for name, (kind, help_text) in families.items():
        # the text format names a counter by its sample (prometheus_client parses
        # "rt_x_total" into the family "rt_x")
        shown = f"{name}_total" if kind == "counter" else name
        out.append(f"# HELP {shown} {_escape_help(help_text)}")
        out.append(f"# TYPE {shown} {kind}")
        for (sample_name, labels), values in samples[name].items():
            value = _combine(name, help_text, values)
            label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            out.append(f"{sample_name}{{{label_text}}} {_number(value)}" if labels
                       else f"{sample_name} {_number(value)}")
    return ("\n".join(out) + "\n").encode("utf-8")


def _number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else (
        "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf"))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class WorkerMetrics:
    """Metrics.gather for the worker `role`."""

    def __init__(self, role: WorkerRole) -> None:
        self.role = role

    async def gather(self, own: bytes) -> bytes:
        others = [i for i in range(self.role.count) if i != self.role.index]
        answers = await asyncio.gather(*(self._ask(i) for i in others))
        return merge([own, *(body for body in answers if body is not None)])

    async def _ask(self, index: int) -> bytes | None:
        try:
            status, _headers, body = await asyncio.wait_for(
                ask(self.role.sibling_socket(index), "GET", "/metrics", [(LOCAL_HEADER, "1")]),
                ASK_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            log.debug("worker %d gave no figures: %s", index, exc)
            return None
        return body if status == 200 else None
