"""open-webui's Redis pools, kept exactly in its format for its backend to read.

- `{p}:session_pool`: hash sid → JSON of the session's user (open-webui's fields minus
  profile image, banner, birth date, bio, gender) + `last_seen_at` (epoch seconds) +
  `chat_ids`. open-webui's backend reads it before and during every `sio.call` (the sid
  must belong to the user), to find a user's sessions, for chat presence and access
  refreshes; it reaps entries whose `last_seen_at` is older than max(4 × heartbeat, 120) s.
  Entries are written at bind, refreshed by heartbeats and by `refresh()` (every
  `REFRESH_INTERVAL`, well within the reaper's window), and removed at disconnect and when
  this appliance learns that another node died.
- `{p}:usage_pool`: hash model → JSON `{sid: {updated_at}}` (`/api/usage`, active models);
  open-webui purges entries older than 3 s itself.

Keys are open-webui's own (`<prefix>:session_pool`), not the appliance's key space.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("rt.openwebui")

REFRESH_INTERVAL = 30.0

# usage: a read-modify-write of one model's JSON, atomic (open-webui's own does it in two
# commands; two appliance nodes touching one model at once must not lose a sid)
_USAGE_TOUCH = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local entry = {}
if raw then entry = cjson.decode(raw) end
entry[ARGV[2]] = {updated_at = tonumber(ARGV[3])}
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
return 1
"""
_USAGE_DROP = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local entry = cjson.decode(raw)
if entry[ARGV[2]] == nil then return 0 end
entry[ARGV[2]] = nil
if next(entry) == nil then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry)) end
return 1
"""


class OpenWebuiPools:
    def __init__(self, redis: Any, prefix: str, clock: Callable[[], float] = time.time):
        self.redis = redis
        self.session_key = f"{prefix}:session_pool" if prefix else "session_pool"
        self.usage_key = f"{prefix}:usage_pool" if prefix else "usage_pool"
        self.clock = clock
        self._entries: dict[str, dict] = {}  # sid → entry of our own sessions
        self._models: dict[str, set[str]] = {}  # sid → models it touched
        self._touch = redis.register_script(_USAGE_TOUCH)
        self._drop = redis.register_script(_USAGE_DROP)

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ sessions
    async def bind(self, sid: str, user: dict) -> None:
        entry = {**user, "chat_ids": [], "last_seen_at": int(self.clock())}
        self._entries[sid] = entry
        await self.redis.hset(self.session_key, sid, orjson.dumps(entry))

    async def heartbeat(self, sid: str) -> None:
        entry = self._entries.get(sid)
        if entry is not None:
            entry["last_seen_at"] = int(self.clock())
            await self.redis.hset(self.session_key, sid, orjson.dumps(entry))

    async def set_chat(self, sid: str, chat_id: str, joined: bool) -> None:
        entry = self._entries.get(sid)
        if entry is None:
            return
        chats = [c for c in entry["chat_ids"] if c != chat_id] + ([chat_id] if joined else [])
        entry["chat_ids"] = chats
        await self.redis.hset(self.session_key, sid, orjson.dumps(entry))

    def chats_of(self, sid: str) -> list[str]:
        entry = self._entries.get(sid)
        return list(entry["chat_ids"]) if entry else []

    async def remove(self, sid: str) -> None:
        self._entries.pop(sid, None)
        await self.redis.hdel(self.session_key, sid)
        for model in self._models.pop(sid, ()):
            await self._drop(keys=[self.usage_key], args=[model, sid])

    async def refresh(self) -> None:
        """Every session of ours seen now: written in one round trip."""
        if not self._entries:
            return
        now = int(self.clock())
        mapping = {}
        for sid, entry in self._entries.items():
            entry["last_seen_at"] = now
            mapping[sid] = orjson.dumps(entry)
        await self.redis.hset(self.session_key, mapping=mapping)

    async def chat_members(self, chat_id: str, fresh_within: float = 120.0) -> list[dict]:
        """Users with a live session in this chat, across the cluster and open-webui's own
        sessions (what open-webui's `chat:presence` lists)."""
        now = self.clock()
        people: dict[str, dict] = {}
        cursor = 0
        while True:
            cursor, batch = await self.redis.hscan(self.session_key, cursor, count=500)
            for raw in batch.values():
                try:
                    session = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if (isinstance(session, dict) and chat_id in (session.get("chat_ids") or [])
                        and now - session.get("last_seen_at", 0) <= fresh_within
                        and isinstance(session.get("id"), str)):
                    people[session["id"]] = {"id": session["id"], "name": session.get("name", "")}
            if not cursor:
                break
        return sorted(people.values(), key=lambda person: person["id"])

    # ------------------------------------------------------------------ usage
    async def use(self, sid: str, model: str) -> None:
        self._models.setdefault(sid, set()).add(model)
        await self._touch(keys=[self.usage_key], args=[model, sid, int(self.clock())])
