"""Waiting for a condition in a test, never without a bound."""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from tests.support.appliance import WAIT


async def until(check: Callable[[], Any], what: str, timeout: float = WAIT * 2) -> None:
    """Return once `check()` is true (or, for a coroutine function, once what it returns
    is); fail naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _truth(check):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _truth(check: Callable[[], Any]) -> bool:
    result = check()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
