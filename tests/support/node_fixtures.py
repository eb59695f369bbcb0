"""pytest fixtures for the Node client harness (tests/support/node_client.py).

Use them from a test module or a conftest.py::

    from tests.support.node_fixtures import node_driver  # noqa: F401

    @pytest.mark.asyncio
    async def test_x(node_driver):
        sock = await node_driver.connect("a", url, path="/ws/socket.io")

Where node or the npm packages are missing the tests are skipped with the
install hint, except under CI=true, where they fail: CI must have run
`make node-deps`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from tests.support.node_client import NodeDriver, NodeReferenceServer, node_available


def require_node() -> None:
    """Skip (locally) or fail (CI=true) the current test when Node is unusable."""
    hint = node_available()
    if hint is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the Node test clients are unavailable: {hint}", pytrace=False)
    pytest.skip(hint)


@pytest_asyncio.fixture
async def node_driver_factory() -> AsyncIterator[Callable[[], Awaitable[NodeDriver]]]:
    """Async callable starting extra NodeDriver processes; all closed at teardown."""
    require_node()
    started: list[NodeDriver] = []

    async def start() -> NodeDriver:
        drv = await NodeDriver.start()
        started.append(drv)
        return drv

    try:
        yield start
    finally:
        for drv in reversed(started):
            await drv.close()


@pytest_asyncio.fixture
async def node_driver(node_driver_factory) -> NodeDriver:
    """One running NodeDriver (tests/node/driver.mjs), closed at teardown."""
    return await node_driver_factory()


@pytest_asyncio.fixture
async def node_reference_server() -> AsyncIterator[NodeReferenceServer]:
    """The npm socket.io 4.8 reference server (tests/node/echo_server.mjs) on a free port."""
    require_node()
    srv = await NodeReferenceServer.start()
    try:
        yield srv
    finally:
        await srv.close()
