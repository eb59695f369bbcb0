"""A bounded cache of open-webui's answers, with loads of one key coalesced.

A thousand tabs of one user connecting at once ask one question: the first caller starts
the load, the others await the same future. Answers live `ttl` seconds; at most `size` are
kept, the least recently used dropped first. Refusals are answers too and are cached like
the rest (a burst of bad tokens costs one request each, not one per tab); failures that
say nothing (open-webui unreachable) are never cached.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)  # the key: open-webui's callers use tuples of strings
V = TypeVar("V")


class _Outcome(Generic[V]):
    __slots__ = ("value", "error", "expires", "at")

    def __init__(self, value: V | None, error: BaseException | None, expires: float, at: float):
        self.value, self.error, self.expires, self.at = value, error, expires, at


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, size: int, *, cache_errors: tuple[type[BaseException], ...] = (),
                 clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.size = size
        self.cache_errors = cache_errors
        self.clock = clock
        self._items: OrderedDict[K, _Outcome[V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: K, load: Callable[[], Awaitable[V]],
                  max_age: float | None = None) -> V:
        """The cached answer, or a new one; `max_age` asks for one at most that old (an
        explicit refresh by the client: its load is still coalesced with others')."""
        outcome = self._items.get(key)
        now = self.clock()
        if (outcome is not None and outcome.expires > now
                and (max_age is None or now - outcome.at <= max_age)):
            self._items.move_to_end(key)
            self.hits += 1
            if outcome.error is not None:
                raise outcome.error
            return cast(V, outcome.value)  # no error: the value load() returned
        pending = self._loading.get(key)
        if pending is not None:
            self.hits += 1
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # we were cancelled ourselves
                return await self.get(key, load, max_age)  # the loader was: load again
        self.misses += 1
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except self.cache_errors as exc:
            now = self.clock()
            self._put(key, _Outcome(None, exc, now + self.ttl, now))
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        else:
            now = self.clock()
            self._put(key, _Outcome(value, None, now + self.ttl, now))
            future.set_result(value)
            return value
        finally:
            self._loading.pop(key, None)

    def _put(self, key: K, outcome: _Outcome[V]) -> None:
        self._items[key] = outcome
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def forget(self, key: K) -> None:
        self._items.pop(key, None)

    def forget_where(self, pred: Callable[[K, V | None], bool]) -> int:
        """Drop the answers for which pred(key, value) holds (refusals have value None)."""
        stale = [key for key, outcome in self._items.items() if pred(key, outcome.value)]
        for key in stale:
            del self._items[key]
        return len(stale)
