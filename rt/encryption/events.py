"""The `encryption:*` client events of open-webui 0.12 (protocol: encrypted channels).

The browser sends each with `socket.timeout(10000).volatile.emit` and reads only the ack's
`ok`; all checking is in the relay (service.py), whose acks never raise through the
gateway, so every answer has open-webui's shape.
"""
from __future__ import annotations

from typing import Any

from ..auth import Identity
from ..gateway import Handler
from .service import ACTIONS, EncryptionRelay


class EncryptionEvents:
    def __init__(self, relay: EncryptionRelay):
        self.relay = relay

    def handlers(self) -> dict[str, Handler]:
        return {f"encryption:{action}": self._handler(action) for action in ACTIONS}

    def _handler(self, action: str) -> Handler:
        async def handle(sid: str, identity: Identity, data: Any) -> dict[str, Any]:
            return await self.relay.handle(action, sid, identity, data)

        return handle

    async def disconnected(self, sid: str, identity: Identity) -> None:
        await self.relay.disconnected(sid, identity)
