"""Client addresses behind a reverse proxy ([server] forwarded_allow_ips).

nginx on the same box connects from loopback and names the browser in X-Forwarded-For /
X-Real-IP: by default those headers are believed from loopback, so every browser counts
under its own address in the per-address limits. From any other peer the headers are
ignored, so a client that connects directly cannot claim an address.
"""
from __future__ import annotations

import contextlib
import socket

import pytest
import socketio

from tests.support.appliance import WAIT, Client, running

pytestmark = pytest.mark.asyncio

LIMITS = "[limits]\nmax_connections_per_ip = 2\nconnect_burst_per_ip = 100\n"


async def connect_as(h, token: str, forwarded: str, host: str = "127.0.0.1") -> str:
    """'ok' or the CONNECT_ERROR message of one websocket connect naming `forwarded`."""
    client = Client()
    got: list = []
    client.on("connect_error", lambda data: got.append(data))
    url = f"http://{host}:{h.app.port}"
    with contextlib.suppress(socketio.exceptions.ConnectionError):
        await client.connect(url, socketio_path=h.path, transports=["websocket"],
                             auth={"token": token}, wait_timeout=WAIT,
                             headers={"X-Forwarded-For": forwarded})
    if client.connected:
        h.clients.append(client)
        return "ok"
    await client.disconnect()
    assert got, "neither connected nor refused"
    return got[0]["message"] if isinstance(got[0], dict) else got[0]


async def test_forwarded_addresses_count_from_loopback_by_default(tmp_path):
    async with running(tmp_path, LIMITS) as h:
        tok = await h.user("a")
        # five browsers behind nginx: each under its own address, none refused
        results = [await connect_as(h, tok, f"203.0.113.{i}") for i in range(5)]
        assert results == ["ok"] * 5
        # one browser address: its second session is allowed, its third over the limit
        assert await connect_as(h, tok, "203.0.113.0") == "ok"
        assert await connect_as(h, tok, "203.0.113.0") == "rate_limited"
        assert h.app.limits.refused["connections_per_ip"] == 1


async def test_forwarded_addresses_from_an_untrusted_peer_are_ignored(tmp_path):
    # loopback is not among the trusted proxies here: the header is a claim, not a fact
    ini = LIMITS + "[server]\nforwarded_allow_ips = 192.0.2.1\n"
    async with running(tmp_path, ini) as h:
        tok = await h.user("a")
        results = [await connect_as(h, tok, f"203.0.113.{i}") for i in range(3)]
        assert results == ["ok", "ok", "rate_limited"]  # all three are 127.0.0.1


def _own_address() -> str | None:
    """An address of this machine other than loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.255", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_a_direct_client_cannot_claim_an_address(tmp_path):
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    ini = LIMITS + "[server]\nhost = 0.0.0.0\n"
    async with running(tmp_path, ini) as h:
        tok = await h.user("a")
        results = [await connect_as(h, tok, f"203.0.113.{i}", host=address)
                   for i in range(3)]
        assert results == ["ok", "ok", "rate_limited"]
