"""The durable store of cluster mode: `Store` on Redis (standalone, Sentinel or Cluster).

Layout (every name from `KeySpace.key`; `P` is the key prefix; values are bytes, numbers
are decimal text, times are `repr(float)` so they read back exactly):

    directory, one slot (tag `dir`): membership changes touch a channel and the reverse
    index of each member, so they must share a slot to be atomic in a Cluster.
      P:{dir}:user:<uid>            hash  name, role, disabled (0|1), last_active
      P:{dir}:channels              set   ids of existing channels (an empty channel too)
      P:{dir}:members:<cid>         hash  uid -> last read time ('' = none yet)
      P:{dir}:user-channels:<uid>   set   cids: reverse index for channels_of_user
    chats (tag `chat:<chat id>`)
      P:{chat:<id>}:messages        hash  message id -> JSON
      P:{chat:<id>}:reads           hash  uid -> time (legacy read markers, see below)
    read markers of a user (tag `chat-reads:<user id>`)
      P:{chat-reads:<uid>}:at       zset  chat id -> time: bounded per user, the oldest
                                    evicted first (ZADD + ZREMRANGEBYRANK in one script)
    notes (tag `note:<note id>`)
      P:{note:<id>}:note            hash  owner, read (JSON list), write (JSON list)
    documents, spread over DOC_BUCKETS slots (tag `docs:<crc32(id) % DOC_BUCKETS>`) so
    that each bucket keeps exact counters next to its documents:
      P:{docs:<b>}:meta:<id>        hash  last_seq, base, updated_at, bytes, content
      P:{docs:<b>}:log:<id>         list  updates base+1 .. last_seq, in seq order
      P:{docs:<b>}:snap:<id>        string  compacted snapshot (covers seqs <= base)
      P:{docs:<b>}:stats            hash  count, bytes of the bucket's documents

Every change that touches more than one key runs as one Lua script (redis_store_scripts.py:
atomic on the server; all its keys share a slot). Where the keys depend on data (delete a
user: every channel they are in), the client reads that data, passes the keys, and the
script re-checks it and answers "retry" if it changed meanwhile: scripts touch only the
keys they declare.
A document append is HINCRBY + RPUSH in one script, so sequence numbers strictly
increase in log order whichever node appends. Chat read markers were kept per chat
(`{chat:<id>}:reads`), where a user's markers cannot be counted; they now live per user.
Markers written before are still read (a miss in the per-user set falls back to the old
hash) and move to the per-user set the next time that chat is marked, which deletes the
old field; no scan is needed, and no old field is created any more.

Durable means acknowledged by Redis; with `wait_replicas > 0` an append also waits (WAIT)
until that many replicas have it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import NoScriptError

from ..core.errors import StoreError
from . import ChatMessage, DocumentTail, Note, StoredDocument, User
from .redis_conn import REDIS_ERRORS, AnyRedis, KeySpace, RedisUnavailable, close_quietly, redact
from .redis_ops import Lua as Lua  # noqa: F401 - the import path of other modules
from .redis_ops import RedisUser as RedisUser
from .redis_ops import text
from .redis_store_scripts import (
    APPEND,
    COMPACT,
    DELETE_CHANNEL,
    DELETE_DOC,
    DELETE_USER,
    GET_MEMBERS,
    LOAD,
    PUT_CHANNEL,
    PUT_USER,
    SET_CHANNEL_READ,
    SET_CHAT_READ,
    SET_CONTENT,
    SET_LAST_ACTIVE,
    TAIL,
    UPDATE_MEMBERS,
)

log = logging.getLogger("rt.backend")
T = TypeVar("T")

# Part of the data layout: changing it moves every document to another key.
DOC_BUCKETS = 256
# Users per set_last_active script call (bounds the time one script holds Redis).
BATCH = 500
# Optimistic re-checks before giving up on a directory change that keeps racing.
RETRIES = 20


def _s(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _f(value: bytes | str | None) -> float | None:
    return None if value is None or value in (b"", "") else float(value)


def _t(at: float) -> str:
    return repr(float(at))


class RedisStore(RedisUser):
    """`Store` on Redis. Takes a client (see redis_conn.RedisTarget.client) and the key
    space; `open()` checks that Redis answers, `close()` closes the client when owned."""

    def __init__(self, client: AnyRedis, keys: KeySpace, *, where: str = "Redis",
                 wait_replicas: int = 0, wait_timeout: float = 1.0,
                 owns_client: bool = True, open_timeout: float = 15.0) -> None:
        if wait_replicas < 0 or wait_timeout <= 0:
            raise ValueError("wait_replicas >= 0 and wait_timeout > 0 required")
        super().__init__(client, keys, where)
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.owns_client = owns_client
        self.open_timeout = open_timeout
        self._open = False
        self._closed = False

    # plumbing ------------------------------------------------------------------------
    async def _run(self, op: Callable[[AnyRedis], Awaitable[T]]) -> T:
        if not self._open:
            raise StoreError(f"Redis store ({self.where}) is not open")
        return await super()._run(op)

    def _dir(self, *parts: str) -> str:
        return self.keys.key("dir", *parts)

    def _doc(self, document_id: str) -> tuple[str, str, str, str]:
        """meta, log, snap, stats keys of a document (one slot: its bucket)."""
        tag = f"docs:{zlib.crc32(document_id.encode()) % DOC_BUCKETS}"
        k = self.keys.key
        return (k(tag, "meta", document_id), k(tag, "log", document_id),
                k(tag, "snap", document_id), k(tag, "stats"))

    # lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        if self._open:
            return
        if self._closed:
            raise StoreError(f"Redis store ({self.where}) is closed")
        try:
            await asyncio.wait_for(self.client.ping(), self.open_timeout)
        except REDIS_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
            raise RedisUnavailable(f"{self.where} is unreachable: {redact(reason)}") from exc
        self._open = True

    async def close(self) -> None:
        if self._closed:
            return
        self._open = False
        self._closed = True
        if self.owns_client:
            await close_quietly(self.client)

    async def ping(self) -> None:
        await self._run(lambda c: c.ping())

    # users ---------------------------------------------------------------------------
    async def put_user(self, user: User) -> None:
        last = "" if user.last_active_at is None else _t(user.last_active_at)
        await self._lua(PUT_USER, [self._dir("user", user.id)],
                        [user.name, user.role, "1" if user.disabled else "0", last])

    async def get_user(self, user_id: str) -> User | None:
        name, role, disabled, last = await self._run(lambda c: c.hmget(
            self._dir("user", user_id), "name", "role", "disabled", "last_active"))
        if name is None:
            return None
        return User(user_id, text(name), _s(role) or "user", disabled == b"1", _f(last))

    async def delete_user(self, user_id: str) -> bool:
        uc = self._dir("user-channels", user_id)
        for _ in range(RETRIES):
            cids = sorted(text(c) for c in await self._run(lambda c: c.smembers(uc)))
            keys = [self._dir("user", user_id), uc, *(self._dir("members", c) for c in cids)]
            done = await self._lua(DELETE_USER, keys, [user_id, len(cids), *cids])
            if done != -1:
                return bool(done > 0)
        raise StoreError(f"{self.where}: delete_user {user_id!r} kept racing; try again")

    async def set_last_active(self, times: dict[str, float]) -> None:
        items = list(times.items())
        for i in range(0, len(items), BATCH):
            chunk = items[i:i + BATCH]
            await self._lua(SET_LAST_ACTIVE, [self._dir("user", u) for u, _ in chunk],
                            [_t(at) for _, at in chunk])

    # channels ------------------------------------------------------------------------
    async def _members(self, channel_id: str) -> list[str]:
        fields = await self._run(lambda c: c.hkeys(self._dir("members", channel_id)))
        return sorted(text(f) for f in fields)

    async def put_channel(self, channel_id: str, members: list[str]) -> None:
        new = set(members)
        for _ in range(RETRIES):
            current = await self._members(channel_id)
            users = sorted(new | set(current))
            keys = [self._dir("channels"), self._dir("members", channel_id),
                    *(self._dir("user-channels", u) for u in users)]
            args: list[str | int] = [channel_id, len(current), *current]
            for u in users:
                args += [u, "1" if u in new else "0"]
            if await self._lua(PUT_CHANNEL, keys, args) != -1:
                return
        raise StoreError(f"{self.where}: put_channel {channel_id!r} kept racing; try again")

    async def update_channel_members(
        self, channel_id: str, add: list[str], remove: list[str]
    ) -> bool:
        ops = [(u, "a") for u in dict.fromkeys(add)] + [(u, "r") for u in dict.fromkeys(remove)]
        keys = [self._dir("channels"), self._dir("members", channel_id),
                *(self._dir("user-channels", u) for u, _ in ops)]
        args = [channel_id, *(x for pair in ops for x in pair)]
        return bool(await self._lua(UPDATE_MEMBERS, keys, args) == 1)

    async def get_channel_members(self, channel_id: str) -> list[str] | None:
        got = await self._lua(GET_MEMBERS, [self._dir("channels"),
                                            self._dir("members", channel_id)], [channel_id])
        return None if got is None else sorted(text(u) for u in got)

    async def delete_channel(self, channel_id: str) -> bool:
        for _ in range(RETRIES):
            current = await self._members(channel_id)
            keys = [self._dir("channels"), self._dir("members", channel_id),
                    *(self._dir("user-channels", u) for u in current)]
            done = await self._lua(DELETE_CHANNEL, keys, [channel_id, len(current), *current])
            if done != -1:
                return bool(done == 1)
        raise StoreError(f"{self.where}: delete_channel {channel_id!r} kept racing; try again")

    async def channels_of_user(self, user_id: str) -> list[str]:
        cids = await self._run(lambda c: c.smembers(self._dir("user-channels", user_id)))
        return sorted(text(c) for c in cids)

    async def set_channel_read(self, channel_id: str, user_id: str, at: float) -> None:
        await self._lua(SET_CHANNEL_READ, [self._dir("members", channel_id)], [user_id, _t(at)])

    async def get_channel_read(self, channel_id: str, user_id: str) -> float | None:
        return _f(await self._run(lambda c: c.hget(self._dir("members", channel_id), user_id)))

    # chats ---------------------------------------------------------------------------
    def _chat(self, chat_id: str, part: str) -> str:
        return self.keys.key(f"chat:{chat_id}", part)

    def _reads(self, user_id: str) -> str:
        return self.keys.key(f"chat-reads:{user_id}", "at")

    async def set_chat_read(self, chat_id: str, user_id: str, at: float,
                            keep: int | None = None) -> None:
        await self._lua(SET_CHAT_READ, [self._reads(user_id)], [chat_id, _t(at), keep or 0])
        # a marker from before the per-user layout must not outlive this one (its chat
        # slot differs, so this is a second, idempotent step)
        await self._run(lambda c: c.hdel(self._chat(chat_id, "reads"), user_id))

    async def get_chat_read(self, chat_id: str, user_id: str) -> float | None:
        at = await self._run(lambda c: c.zscore(self._reads(user_id), chat_id))
        if at is not None:
            return float(at)
        # not in the per-user set: maybe a marker written before it (see the docstring)
        return _f(await self._run(lambda c: c.hget(self._chat(chat_id, "reads"), user_id)))

    async def put_chat_message(self, message: ChatMessage) -> None:
        m = message
        value = json.dumps({"user_id": m.user_id, "content": m.content, "status": m.status,
                            "usage": m.usage, "updated_at": m.updated_at})
        await self._run(lambda c: c.hset(self._chat(m.chat_id, "messages"), m.message_id, value))

    async def get_chat_message(self, chat_id: str, message_id: str) -> ChatMessage | None:
        raw = await self._run(lambda c: c.hget(self._chat(chat_id, "messages"), message_id))
        if raw is None:
            return None
        d = json.loads(raw)
        return ChatMessage(chat_id, message_id, d["user_id"], d["content"], d["status"],
                           d["usage"], d["updated_at"])

    # notes ---------------------------------------------------------------------------
    def _note(self, note_id: str) -> str:
        return self.keys.key(f"note:{note_id}", "note")

    async def put_note(self, note: Note) -> None:
        # One HSET of every field: owner and grants change together.
        await self._run(lambda c: c.hset(self._note(note.id), mapping={
            "owner": note.owner,
            "read": json.dumps(sorted(note.read)),
            "write": json.dumps(sorted(note.write)),
        }))

    async def get_note(self, note_id: str) -> Note | None:
        owner, read, write = await self._run(
            lambda c: c.hmget(self._note(note_id), "owner", "read", "write"))
        if owner is None:
            return None
        return Note(note_id, text(owner), frozenset(json.loads(read or b"[]")),
                    frozenset(json.loads(write or b"[]")))

    async def delete_note(self, note_id: str) -> bool:
        return bool(await self._run(lambda c: c.delete(self._note(note_id))) > 0)

    # documents -----------------------------------------------------------------------
    async def append_update(self, document_id: str, update: bytes) -> int:
        return await self._append(document_id, update, only_first=False)

    async def append_first_update(self, document_id: str, update: bytes) -> int | None:
        # the check and the append are one script: atomic whichever node runs it
        return await self._append(document_id, update, only_first=True) or None

    async def _append(self, document_id: str, update: bytes, only_first: bool) -> int:
        """The seq of the appended update; 0 when `only_first` and the document had one."""
        meta, log_key, _, stats = self._doc(document_id)
        keys = [meta, log_key, stats]
        args = [bytes(update), _t(time.time()), "1" if only_first else "0"]
        if not self.wait_replicas:
            return int(await self._lua(APPEND, keys, args))
        seq, acked = await self._run(lambda c: self._append_and_wait(c, keys, args))
        if not seq:
            return 0  # nothing written: nothing to wait for
        if acked < self.wait_replicas:
            raise StoreError(
                f"{self.where}: update {seq} of {document_id!r} reached {acked} of "
                f"{self.wait_replicas} replicas within {self.wait_timeout} s")
        return seq

    async def _append_and_wait(self, c: AnyRedis, keys: list[str],
                               args: list[Any]) -> tuple[int, int]:
        """The append and WAIT on one connection (WAIT covers that connection's writes)."""
        wait: list[str | int] = ["WAIT", self.wait_replicas, int(self.wait_timeout * 1000)]
        extra: dict[str, Any] = {}
        if hasattr(c, "get_node_from_key"):  # Cluster: WAIT on the node holding the keys
            extra["target_nodes"] = c.get_node_from_key(keys[0])
        for use_sha in (True, False):
            pipe = c.pipeline(transaction=False)
            # execute_command: a Cluster pipeline refuses its evalsha/eval helpers but
            # routes the raw commands by their keys
            if use_sha:
                pipe.execute_command("EVALSHA", APPEND.sha, len(keys), *keys, *args)
            else:
                pipe.execute_command("EVAL", APPEND.source, len(keys), *keys, *args)
            pipe.execute_command(*wait, **extra)
            seq, acked = await pipe.execute(raise_on_error=False)
            if isinstance(seq, NoScriptError) and use_sha:
                continue  # the script did not run: run it by source
            for result in (seq, acked):
                if isinstance(result, Exception):
                    raise result
            return int(seq), int(acked)
        raise AssertionError("unreachable")

    async def load_document(self, document_id: str) -> StoredDocument | None:
        meta, log_key, snap, _ = self._doc(document_id)
        got = await self._lua(LOAD, [meta, log_key, snap])
        if got is None:
            return None
        (last_seq, updated_at, content), snapshot, updates = got
        return StoredDocument(document_id, snapshot, list(updates), int(last_seq or 0),
                              _s(content), float(updated_at))

    async def document_tail(self, document_id: str, after_seq: int) -> DocumentTail | None:
        meta, log_key, _, _ = self._doc(document_id)
        got = await self._lua(TAIL, [meta, log_key], [int(after_seq)])
        if got is None:
            return None
        (last_seq, updated_at, content, _, stored_bytes), count, updates = got
        return DocumentTail(document_id, None if updates is None else list(updates),
                            int(last_seq or 0), _s(content), float(updated_at),
                            int(stored_bytes or 0), int(count))

    async def compact_document(self, document_id: str, upto_seq: int, snapshot: bytes) -> None:
        await self._lua(COMPACT, self._doc(document_id), [int(upto_seq), bytes(snapshot)])

    async def set_document_content(self, document_id: str, content: str) -> None:
        meta, _, _, stats = self._doc(document_id)
        await self._lua(SET_CONTENT, [meta, stats], [content, _t(time.time())])

    async def delete_document(self, document_id: str) -> bool:
        return bool(await self._lua(DELETE_DOC, self._doc(document_id)) == 1)

    async def document_stats(self) -> tuple[int, int]:
        async def read(c: AnyRedis) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            for b in range(DOC_BUCKETS):
                pipe.hmget(self.keys.key(f"docs:{b}", "stats"), "count", "bytes")
            return await pipe.execute()

        count = total = 0
        for n, size in await self._run(read):
            count += int(n or 0)
            total += int(size or 0)
        return count, total
