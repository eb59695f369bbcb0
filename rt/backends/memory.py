"""Ephemeral state of a single node, in process memory.

Dicts with reverse indexes so that every operation is O(1) in the number of sessions;
nothing here ever scans all sessions on a hot path.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..core.errors import UsageFull


class MemoryPresence:
    def __init__(self) -> None:
        self._user_of: dict[str, str] = {}
        # user → their one sid, or a set of them: most users have one tab, and a set of one
        # costs 216 bytes per connection where the sid itself is already held
        self._sessions: dict[str, str | set[str]] = {}

    async def add(self, sid: str, user_id: str) -> None:
        self._user_of[sid] = user_id
        held = self._sessions.get(user_id)
        if held is None:
            self._sessions[user_id] = sid
        elif isinstance(held, set):
            held.add(sid)
        elif held != sid:
            self._sessions[user_id] = {held, sid}

    async def remove(self, sid: str) -> str | None:
        user_id = self._user_of.pop(sid, None)
        if user_id is not None:
            held = self._sessions.get(user_id)
            if isinstance(held, set):
                held.discard(sid)
                if len(held) == 1:
                    self._sessions[user_id] = next(iter(held))
            elif held == sid:
                del self._sessions[user_id]
        return user_id

    async def sessions_of(self, user_id: str) -> list[str]:
        held = self._sessions.get(user_id)
        return [] if held is None else [held] if isinstance(held, str) else list(held)

    async def user_of(self, sid: str) -> str | None:
        return self._user_of.get(sid)

    async def users(self) -> dict[str, int]:
        return {uid: 1 if isinstance(held, str) else len(held)
                for uid, held in self._sessions.items()}


class MemoryUsage:
    # This node alone sees these entries: the monotonic clock, immune to wall-clock steps
    # (see UsageRegistry.clock).
    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # model → {sid: last touch}
        self._pool: dict[str, dict[str, float]] = {}
        self._models_of: dict[str, set[str]] = {}
        self._version = 0

    async def touch(self, model: str, sid: str, now: float, max_per_sid: int | None = None,
                    max_models: int | None = None) -> bool:
        entries = self._pool.get(model)
        held = self._models_of.get(sid, ())
        if model not in held:
            if max_per_sid is not None and len(held) >= max_per_sid:
                raise UsageFull("connection")
            if entries is None and max_models is not None and len(self._pool) >= max_models:
                raise UsageFull("total")
        changed = entries is None
        if entries is None:
            entries = self._pool[model] = {}
            self._version += 1
        entries[sid] = now
        self._models_of.setdefault(sid, set()).add(model)
        return changed

    async def drop_sid(self, sid: str) -> bool:
        changed = False
        for model in self._models_of.pop(sid, ()):
            entries = self._pool.get(model)
            if entries is not None:
                entries.pop(sid, None)
                if not entries:
                    del self._pool[model]
                    changed = True
        self._version += changed
        return changed

    async def expire(self, older_than: float) -> bool:
        changed = False
        for model in list(self._pool):
            entries = self._pool[model]
            for sid in [s for s, at in entries.items() if at < older_than]:
                del entries[sid]
                models = self._models_of.get(sid)
                if models is not None:
                    models.discard(model)
                    if not models:
                        del self._models_of[sid]
            if not entries:
                del self._pool[model]
                changed = True
        self._version += changed
        return changed

    async def models(self) -> list[str]:
        return sorted(self._pool)

    async def snapshot(self) -> tuple[int, list[str]]:
        return self._version, sorted(self._pool)

    async def version(self) -> int:
        return self._version


class MemoryEditors:
    def __init__(self) -> None:
        self._editors: dict[str, dict[str, dict[str, Any]]] = {}  # document → sid → editor
        self._docs: dict[str, set[str]] = {}  # sid → documents

    async def add(self, document_id: str, sid: str, editor: dict[str, Any]) -> None:
        self._editors.setdefault(document_id, {})[sid] = editor
        self._docs.setdefault(sid, set()).add(document_id)

    async def remove(self, document_id: str, sid: str) -> dict[str, Any] | None:
        editors = self._editors.get(document_id, {})
        editor = editors.pop(sid, None)
        if not editors:
            self._editors.pop(document_id, None)
        docs = self._docs.get(sid)
        if docs is not None:
            docs.discard(document_id)
            if not docs:
                del self._docs[sid]
        return editor

    async def sessions(self, document_id: str) -> list[str]:
        return list(self._editors.get(document_id, ()))

    async def documents_of(self, sid: str) -> list[str]:
        return sorted(self._docs.get(sid, ()))
