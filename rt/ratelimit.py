"""Token buckets keyed by whatever needs limiting (a connection, an address)."""
from __future__ import annotations

import time
from collections.abc import Callable


class Buckets:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        # key → complex(tokens, at): two floats, exactly, in one 32-byte object (a tuple of
        # two floats takes about 110), and there is one per live connection
        self._state: dict[str, complex] = {}

    def allow(self, key: str, cost: float = 1.0) -> bool:
        now = self.clock()
        state = self._state.get(key)
        if state is None:
            tokens, at = float(self.burst), now
        else:
            tokens, at = state.real, state.imag
        tokens += (now - at) * self.rate
        if tokens > self.burst:  # (once per event: a comparison rather than min())
            tokens = float(self.burst)
        if tokens < cost:
            self._state[key] = complex(tokens, now)
            return False
        self._state[key] = complex(tokens - cost, now)
        return True

    def forget(self, key: str) -> None:
        self._state.pop(key, None)

    def __len__(self) -> int:
        return len(self._state)
