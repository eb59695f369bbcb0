"""Per-connection and per-address limits, one place for every check and its count.

Each refusal is counted by limit name (`rt_limited_total{limit}` in /metrics) and reported
to the caller as `rate_limited` / `too_large`, never as a silent drop.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from .metrics import Figure
from .payloads import RateLimited
from .ratelimit import Buckets


class Limits:
    def __init__(self, limits_settings: Any) -> None:
        self.refused: Counter[str] = Counter()
        self._per_ip: Counter[str] = Counter()  # live sessions by client address
        self._ip_of: dict[str, str] = {}
        self.connect_buckets = Buckets(1, 1)
        self.event_buckets = Buckets(1, 1)
        self.api_buckets = Buckets(1, 1)
        self.typing_buckets = Buckets(1, 1)
        self.configure(limits_settings)

    def configure(self, s: Any) -> None:
        """(Re)apply the [limits] section; called at start and on reload."""
        self.s = s
        for bucket, rate, burst in (
            (self.connect_buckets, s.connects_per_second_per_ip, s.connect_burst_per_ip),
            (self.event_buckets, s.events_per_second, s.events_burst),
            (self.api_buckets, s.api_requests_per_second, s.api_burst),
            (self.typing_buckets, s.typing_per_second, s.typing_burst),
        ):
            bucket.rate, bucket.burst = rate, burst

    def figures(self) -> Iterable[Figure]:
        yield Figure("rt_limited", "Requests refused (or typing events coalesced) by a limit, "
                     "by limit name", dict(self.refused), label="limit", counter=True)

    def typing_allows(self, sid: str, waiting: bool = False) -> bool:
        """Whether a typing indicator of this session may go now (never while an earlier
        one still `waiting`); when not, it is coalesced into a later one (counted as
        `typing`, not refused: see typing_gate.py)."""
        if not waiting and self.typing_buckets.allow(sid):
            return True
        self.refused["typing"] += 1
        return False

    def typing_interval(self) -> float:
        rate = self.typing_buckets.rate
        return 1.0 / rate if rate > 0 else 1.0

    def _refuse(self, limit: str, message: str) -> RateLimited:
        self.refused[limit] += 1
        return RateLimited(message)

    # ---------------------------------------------------------------- connections
    def check_connect(self, ip: str) -> None:
        """Before the token is verified: raise RateLimited when this connect is over a limit."""
        if not self.connect_buckets.allow(ip):
            raise self._refuse("connect_rate", "too many new connections from this address")
        if len(self._ip_of) >= self.s.max_connections:
            raise self._refuse("connections", "this node is at its connection limit")
        if self._per_ip[ip] >= self.s.max_connections_per_ip:
            raise self._refuse("connections_per_ip", "too many connections from this address")

    def connected(self, sid: str, ip: str) -> None:
        self._ip_of[sid] = ip
        self._per_ip[ip] += 1

    def disconnected(self, sid: str) -> None:
        self.typing_buckets.forget(sid)
        ip = self._ip_of.pop(sid, None)
        self.event_buckets.forget(sid)
        if ip is not None:
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]

    # ---------------------------------------------------------------- events, rooms
    def check_event(self, sid: str) -> None:
        if not self.event_buckets.allow(sid):
            raise self._refuse("events", "too many events from this connection")

    def check_rooms(self, current: int, adding: int = 1) -> None:
        if current + adding > self.s.max_rooms_per_connection:
            raise self._refuse("rooms", "this connection is in too many rooms")

    def check_documents(self, current: int) -> None:
        if current + 1 > self.s.max_documents_per_connection:
            raise self._refuse("documents", "this connection has joined too many documents")

    # ---------------------------------------------------------------- models in use
    def usage_caps(self) -> tuple[int, int]:
        """(models per connection, models in all): checked by the usage registry itself,
        atomically with the write (in Redis mode other nodes touch the same set)."""
        return self.s.usage_models_per_connection, self.s.usage_models_max

    def usage_refused(self, scope: str) -> RateLimited:
        """The refusal of a usage event over a cap (`UsageFull.scope`), counted."""
        if scope == "connection":
            return self._refuse("usage_models_per_connection",
                                "this connection uses too many models at once "
                                f"(at most {self.s.usage_models_per_connection})")
        return self._refuse("usage_models", "too many models are in use "
                                            f"(at most {self.s.usage_models_max})")

    # ---------------------------------------------------------------- HTTP API
    def check_api(self, ip: str, body_bytes: int) -> str | None:
        """None when allowed, else the error code ('too_large' or 'rate_limited')."""
        if body_bytes > self.s.api_max_body_bytes:
            self.refused["api_body"] += 1
            return "too_large"
        if not self.api_buckets.allow(ip):
            self.refused["api_rate"] += 1
            return "rate_limited"
        return None

    def sessions_by_ip(self) -> int:
        return len(self._per_ip)
