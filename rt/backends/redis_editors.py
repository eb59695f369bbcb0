"""Who edits which Yjs document in cluster mode, in Redis (`EditorRegistry` shared by every
node); entries of sessions whose node died are hidden through presence."""
from __future__ import annotations

import json
from typing import Any

from .redis_conn import AnyRedis, KeySpace
from .redis_ops import RedisUser, text
from .redis_presence import RedisPresence


class RedisEditors(RedisUser):
    """`EditorRegistry` shared by every node: a hash per document (sid → editor JSON) and a
    set per session (its documents, the reverse index for cleanup). The two live in
    different Cluster slots, so they are written one after the other; both writes are
    idempotent and a reader never trusts an entry whose session is not alive in presence
    (a dead node's sessions vanish from there first)."""

    def __init__(self, client: AnyRedis, keys: KeySpace, presence: RedisPresence, *,
                 where: str = "Redis") -> None:
        super().__init__(client, keys, where)
        self.presence = presence

    def _doc(self, document_id: str) -> str:
        return self.keys.key(f"editors:{document_id}", "sids")

    def _sid(self, sid: str) -> str:
        return self.keys.key(f"editor-docs:{sid}", "docs")

    async def add(self, document_id: str, sid: str, editor: dict[str, Any]) -> None:
        value = json.dumps(editor, separators=(",", ":"))
        await self._run(lambda c: c.hset(self._doc(document_id), sid, value))
        await self._run(lambda c: c.sadd(self._sid(sid), document_id))

    async def remove(self, document_id: str, sid: str) -> dict[str, Any] | None:
        raw = await self._run(lambda c: c.hget(self._doc(document_id), sid))
        await self._run(lambda c: c.hdel(self._doc(document_id), sid))
        await self._run(lambda c: c.srem(self._sid(sid), document_id))
        return json.loads(raw) if raw is not None else None

    async def sessions(self, document_id: str) -> list[str]:
        sids = [text(s) for s in await self._run(lambda c: c.hkeys(self._doc(document_id)))]
        return [sid for sid in sids if await self.presence.user_of(sid) is not None]

    async def documents_of(self, sid: str) -> list[str]:
        return sorted(text(d) for d in await self._run(lambda c: c.smembers(self._sid(sid))))
