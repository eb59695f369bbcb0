"""`usage`: a session says which model it is using now."""
from __future__ import annotations

from typing import Any

from .. import payloads as p
from ..auth import Identity
from ..core.errors import UsageFull
from ..gateway import Gateway, Handler


class UsageEvents:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def handlers(self) -> dict[str, Handler]:
        return {"usage": self.usage}

    async def usage(self, sid: str, identity: Identity, data: Any) -> None:
        data = p.obj(data)
        model = p.ident(data, "model")
        # open-webui sends chat_id "" for a chat not saved yet
        p.text(data, "chat_id", max_len=p.MAX_ID)
        p.text(data, "action", max_len=64)
        limits = self.gateway.limits
        try:
            await self.gateway.usage.touch(model, sid, *limits.usage_caps())
        except UsageFull as exc:
            raise limits.usage_refused(exc.scope) from None
        await self.gateway.ledger.model_used(sid, model)
