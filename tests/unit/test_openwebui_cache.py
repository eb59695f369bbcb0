"""The bounded TTL cache of open-webui's answers (rt/openwebui/cache.py)."""
from __future__ import annotations

import asyncio

import pytest

from rt.openwebui.api import Refused, Unavailable
from rt.openwebui.cache import TtlCache

pytestmark = pytest.mark.asyncio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting(value="v", exc: BaseException | None = None, gate: asyncio.Event | None = None):
    calls = []

    async def load():
        calls.append(1)
        if gate is not None:
            await gate.wait()
        if exc is not None:
            raise exc
        return value

    return load, calls


async def test_answers_live_ttl_seconds_and_max_age_asks_again():
    clock = Clock()
    cache: TtlCache = TtlCache(10, 100, clock=clock)
    load, calls = counting()
    assert await cache.get("k", load) == "v"
    clock.now += 5
    assert await cache.get("k", load) == "v" and len(calls) == 1
    assert await cache.get("k", load, max_age=2) == "v" and len(calls) == 2
    clock.now += 11
    assert await cache.get("k", load) == "v" and len(calls) == 3


async def test_size_is_bounded_least_recently_used_first():
    cache: TtlCache = TtlCache(60, 3, clock=Clock())
    for key in "abcd":
        await cache.get(key, counting(key)[0])
    assert len(cache) == 3
    load, calls = counting("a2")
    assert await cache.get("a", load) == "a2" and calls  # "a" was dropped


async def test_concurrent_loads_of_one_key_make_one_call():
    gate = asyncio.Event()
    cache: TtlCache = TtlCache(60, 10, clock=Clock())
    load, calls = counting(gate=gate)
    waiting = [asyncio.ensure_future(cache.get("k", load)) for _ in range(1000)]
    await asyncio.sleep(0)
    gate.set()
    assert set(await asyncio.gather(*waiting)) == {"v"} and len(calls) == 1


async def test_refusals_are_cached_and_unavailability_is_not():
    cache: TtlCache = TtlCache(60, 10, cache_errors=(Refused,), clock=Clock())
    refused, calls = counting(exc=Refused(401))
    for _ in range(3):
        with pytest.raises(Refused):
            await cache.get("bad", refused)
    assert len(calls) == 1
    down, calls = counting(exc=Unavailable("down"))
    for _ in range(3):
        with pytest.raises(Unavailable):
            await cache.get("k", down)
    assert len(calls) == 3


async def test_a_cancelled_loader_lets_a_waiter_load_again():
    gate = asyncio.Event()
    cache: TtlCache = TtlCache(60, 10, clock=Clock())
    slow, _ = counting(gate=gate)
    first = asyncio.ensure_future(cache.get("k", slow))
    await asyncio.sleep(0)
    fast, calls = counting("fresh")
    second = asyncio.ensure_future(cache.get("k", fast))
    await asyncio.sleep(0)
    first.cancel()
    assert await asyncio.wait_for(second, 5) == "fresh" and calls


async def test_forget_where_sees_keys_and_values():
    cache: TtlCache = TtlCache(60, 10, clock=Clock())
    await cache.get(("auth", "t1"), counting({"id": "u1"})[0])
    await cache.get(("auth", "t2"), counting({"id": "u2"})[0])
    assert cache.forget_where(lambda key, value: value["id"] == "u1") == 1
    assert len(cache) == 1
