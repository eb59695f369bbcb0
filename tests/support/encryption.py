"""Encrypted-channel relays for tests: eligibility from a table, a relay wired into a
running appliance, and the browser's request/event helpers."""
from __future__ import annotations

from typing import Any

from rt.app import Appliance
from rt.auth import Identity
from rt.backends.encryption_state import MemoryRelayState, RedisRelayState
from rt.encryption.delivery import Publish, SidDelivery
from rt.encryption.events import EncryptionEvents
from rt.encryption.service import EncryptionRelay
from tests.support.appliance import WAIT, Client


class ChannelTable:
    """Eligibility from a table of channel members: `may_join` as open-webui answers it."""

    def __init__(self, channels: dict[str, set[str]]) -> None:
        self.channels = channels

    async def may_join(self, sid: str, identity: Identity, channel_id: str) -> bool:
        return identity.id in self.channels.get(channel_id, set())


def attach(app: Appliance, table: ChannelTable, publish: Publish | None = None,
           host_id: str = "") -> EncryptionRelay:
    """Wire a relay into a running appliance the way the composition root does, with the
    table as eligibility (its handlers replace those of the relay the app has). The state is the backend's when it provides one."""
    state = getattr(app.backend, "encryption", None)
    if state is None and app.backend.name == "redis":
        state = RedisRelayState(app.backend.store.client, app.backend.store.keys.prefix)
    elif state is None:
        state = MemoryRelayState()
    delivery = SidDelivery(app.sio, local=app.gateway.identities,
                           presence=app.backend.presence, publish=publish, host_id=host_id)
    relay = EncryptionRelay(app.sio, state, table.may_join, delivery=delivery,
                            protocol_logging=lambda: app.settings.server.protocol_logging)
    gateway = app.gateway
    for name in EncryptionEvents(relay).handlers():
        gateway.handlers.pop(name, None)  # the app's own relay steps aside
    gateway.add(EncryptionEvents(relay))
    return relay


async def ask(client: Client, action: str, data: Any) -> Any:
    return await client.call(f"encryption:{action}", data, timeout=WAIT)


async def event(client: Client, pred) -> dict:
    return await client.rec.wait_for("encryption:event", pred)
