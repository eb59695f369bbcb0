"""The `encryption:*` client events of open-webui 0.12 (protocol: encrypted channels).

The browser sends each with `socket.timeout(10000).volatile.emit` and reads only the ack's
`ok`; all checking is in the relay (encryption_relay.py), whose acks never raise through
the gateway, so every answer has open-webui's shape.
"""
from __future__ import annotations

from typing import Any

from .auth import Identity
from .encryption_relay import ACTIONS, EncryptionRelay


def register(gateway, relay: EncryptionRelay) -> None:
    for action in ACTIONS:
        async def handler(sid: str, identity: Identity, data: Any, action: str = action) -> dict:
            return await relay.handle(action, sid, identity, data)

        gateway.event(f"encryption:{action}", handler)
    gateway.disconnect_hooks.append(relay.disconnected)
