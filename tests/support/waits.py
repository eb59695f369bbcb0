"""Waiting for a condition in a test, never without a bound."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.support.appliance import WAIT


async def until(check: Callable[[], Any], what: str, timeout: float = WAIT * 2) -> None:
    """Return once `check()` is true; fail naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
