"""What the engine is configured with: one immutable value, replaced whole on a reload
(sessions read it when they need it; ping settings are fixed per session at handshake)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

# a session's inbox may always hold this much before it stops reading (inbox_bytes)
INBOX_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class EngineOptions:
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    allow_websocket: bool = True
    # None = every origin; otherwise the allowed Origin header values
    cors_origins: tuple[str, ...] | None = None
    compression: bool = False
    upgrade_timeout: float = 10.0
    # a session whose unsent output (websocket buffer, or packets waiting for a poll) grows
    # past this is a slow consumer and is closed
    max_outbound_bytes: int = 16 * 1024 * 1024
    # Inbound budget per session (inflow.py). Above the rate the engine stops reading the
    # client's socket (TCP backpressure; a polling POST is answered later) instead of
    # decoding and refusing what it sends. Every inbound packet counts (messages, binary
    # attachments, pongs, noops, websocket pings). The gateway's default events_per_second
    # and events_burst: a flood is slowed here, before any of it is decoded, rather than
    # refused there one event at a time (each refusal being decoded, handled and answered).
    inbound_rate: float = 100.0
    inbound_burst: int = 200
    # bytes: sustained rate, and what a session may send at once (never below max_payload,
    # so one largest message always fits)
    inbound_bytes_rate: float = 1024 * 1024
    inbound_bytes_burst: int = 4 * 1024 * 1024
    # a session held at its inbound budget this long without a pause is flooding: it is
    # closed (websocket close 1008 "inbound flood"); 0 = never
    flood_close_after: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def inbound_bytes_capacity(self) -> int:
        """The byte bucket's size: the burst, never below one largest message."""
        return max(self.inbound_bytes_burst, self.max_payload)

    @cached_property
    def inbox_bytes(self) -> int:
        """Bytes received but not handled yet at which a session stops reading (inflow.py):
        never below one largest message."""
        return max(INBOX_MIN_BYTES, self.max_payload)

    def origin_allowed(self, origin: str | None) -> bool:
        # requests without Origin come from non-browser clients; CORS does not apply
        return origin is None or self.cors_origins is None or origin in self.cors_origins
