"""The interfaces between the services and the state they keep.

Durable state (directory, read markers, last-active times, Yjs documents, finished chat
messages) goes through `Store`; it is SQLite on one node and Redis in cluster mode, and one
contract suite (tests/contract) holds both to the same behaviour.

Every method is a coroutine so that no implementation blocks the event loop: the SQLite store
runs its statements on one dedicated thread, the Redis store uses the asyncio client.
Timestamps are float seconds since the epoch. Ids are non-empty strings.
"""
from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class User:
    id: str
    name: str
    role: str = "user"  # user | admin | pending
    disabled: bool = False
    last_active_at: float | None = None


@dataclass(frozen=True)
class Note:
    id: str
    owner: str
    read: frozenset[str] = field(default_factory=frozenset)
    write: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class StoredDocument:
    """A Yjs document as kept: a compacted snapshot plus the updates appended since."""

    id: str
    snapshot: bytes | None
    updates: list[bytes]
    # sequence number of the last update in `updates` (or covered by `snapshot`)
    last_seq: int
    content: str | None
    updated_at: float


@dataclass(frozen=True)
class DocumentTail:
    """What a store holds of a document after a given seq: what a copy that is current up
    to that seq lacks (a shared store: other nodes appended)."""

    id: str
    # the updates after the seq asked for, in order; None when the log no longer holds all
    # of them (compacted past that seq): only a whole load brings such a copy up to date
    updates: list[bytes] | None
    last_seq: int
    content: str | None
    updated_at: float
    stored_bytes: int  # the snapshot's and every logged update's bytes
    log_count: int  # the updates logged since the snapshot


@dataclass(frozen=True)
class ChatMessage:
    chat_id: str
    message_id: str
    user_id: str
    content: str
    status: str  # done | cancelled | error
    usage: dict[str, Any] | None
    updated_at: float


class Store(Protocol):
    # lifecycle -----------------------------------------------------------------------
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None:
        """Raise StoreError when the store cannot serve reads and writes now."""

    # users -----------------------------------------------------------------------------
    async def put_user(self, user: User) -> None: ...
    async def get_user(self, user_id: str) -> User | None: ...
    async def delete_user(self, user_id: str) -> bool: ...
    async def set_last_active(self, times: dict[str, float]) -> None:
        """Record many users' last-active times at once (coalesced heartbeats).
        A time older than the stored one is ignored. Unknown users are ignored."""

    # channels --------------------------------------------------------------------------
    async def put_channel(self, channel_id: str, members: list[str]) -> None: ...
    async def update_channel_members(
        self, channel_id: str, add: list[str], remove: list[str]
    ) -> bool:
        """False when the channel does not exist."""

    async def get_channel_members(self, channel_id: str) -> list[str] | None: ...
    async def delete_channel(self, channel_id: str) -> bool: ...
    async def channels_of_user(self, user_id: str) -> list[str]: ...
    async def set_channel_read(self, channel_id: str, user_id: str, at: float) -> None: ...
    async def get_channel_read(self, channel_id: str, user_id: str) -> float | None: ...

    # chats -----------------------------------------------------------------------------
    async def set_chat_read(self, chat_id: str, user_id: str, at: float,
                            keep: int | None = None) -> None:
        """Record the user's read time of the chat. With `keep`, marking a chat the user
        had no marker for leaves at most `keep` markers of that user: the oldest others
        (by time, ties by chat id) are removed, never the one just written."""

    async def get_chat_read(self, chat_id: str, user_id: str) -> float | None: ...
    async def put_chat_message(self, message: ChatMessage) -> None: ...
    async def get_chat_message(self, chat_id: str, message_id: str) -> ChatMessage | None: ...

    # notes -----------------------------------------------------------------------------
    async def put_note(self, note: Note) -> None: ...
    async def get_note(self, note_id: str) -> Note | None: ...
    async def delete_note(self, note_id: str) -> bool: ...

    # documents -------------------------------------------------------------------------
    async def append_update(self, document_id: str, update: bytes) -> int:
        """Append one update durably (on disk before returning); returns its sequence
        number. Sequence numbers of one document strictly increase."""

    async def append_first_update(self, document_id: str, update: bytes) -> int | None:
        """Append `update` only if the document has never had one (it is unknown, or only
        its rendered content is stored): its sequence number then, else None and nothing
        changed. Atomic, so of any number of concurrent calls for one document, from any
        node, exactly one stores its update (the first write wins a seeding race)."""

    async def load_document(self, document_id: str) -> StoredDocument | None: ...
    async def document_tail(self, document_id: str, after_seq: int) -> DocumentTail | None:
        """The updates after `after_seq` (and the document's current figures), reading
        nothing before them; None when the document is not stored."""

    async def compact_document(self, document_id: str, upto_seq: int, snapshot: bytes) -> None:
        """Atomically replace the snapshot and every update with seq <= upto_seq by
        `snapshot` (which must already contain them). Updates appended meanwhile stay."""

    async def set_document_content(self, document_id: str, content: str) -> None: ...
    async def delete_document(self, document_id: str) -> bool: ...
    async def document_stats(self) -> tuple[int, int]:
        """(number of documents, total stored bytes)."""


class PresenceRegistry(Protocol):
    """Live sessions per user. Node-local on one node; cluster-wide (node id + TTL) on Redis."""

    async def add(self, sid: str, user_id: str) -> None: ...
    async def remove(self, sid: str) -> str | None:
        """Forget a session; returns its user id (None when unknown)."""

    async def sessions_of(self, user_id: str) -> list[str]: ...
    async def user_of(self, sid: str) -> str | None: ...
    async def users(self) -> dict[str, int]:
        """user id → number of live sessions, for every user online."""


class UsageRegistry(Protocol):
    """Which models are in use now: entries that expire `ttl` seconds after their last touch."""

    # The clock that `now` and `older_than` are read from, chosen here and nowhere else. A
    # registry of one node uses time.monotonic: a wall-clock step (NTP, an operator) must
    # neither keep entries alive nor expire them all at once. A registry shared by nodes
    # uses time.time: one node writes an entry's time and another node's sweep compares it,
    # and only the wall clock is common to both (monotonic clocks differ per machine).
    clock: Callable[[], float]
    # True when other nodes change (and broadcast) the same set.
    shared: bool

    async def touch(self, model: str, sid: str, now: float, max_per_sid: int | None = None,
                    max_models: int | None = None) -> bool:
        """True when the set of models in use changed. Refreshing an entry the session
        already holds always succeeds; a new one raises UsageFull (and changes nothing)
        when the session holds `max_per_sid` models already, or when the model is new and
        the set holds `max_models` models."""

    async def drop_sid(self, sid: str) -> bool: ...
    async def expire(self, older_than: float) -> bool: ...
    async def models(self) -> list[str]: ...
    async def snapshot(self) -> tuple[int, list[str]]:
        """(version, models) read together; the version grows with every change of the
        set (cluster-wide when shared), so equal versions mean the same set."""

    async def version(self) -> int: ...


class EditorRegistry(Protocol):
    """Who edits which Yjs document, cluster-wide: each entry is a session and its editor
    details (user id, name, colour). Entries of sessions that are gone (their node died)
    are not listed, and `documents_of` lets whoever handles such a session's end announce
    the leaves."""

    async def add(self, document_id: str, sid: str, editor: dict[str, Any]) -> None: ...
    async def remove(self, document_id: str, sid: str) -> dict[str, Any] | None: ...
    async def sessions(self, document_id: str) -> list[str]: ...
    async def documents_of(self, sid: str) -> list[str]: ...


# a node-to-node control message's handler: gets the payload. A coroutine function runs as
# a task of its own; a plain function runs as the message is read, in the channel's order,
# without a task (what delivers every recorded emit: one handler call per message per node)
ControlHandler = Callable[[dict[str, Any]], Coroutine[Any, Any, None] | None]


class ClientManager(Protocol):
    """What the appliance asks of python-socketio's client manager beyond python-socketio's
    own interface (fanout.py on one node, redis_manager.py on Redis)."""

    # whether other nodes exist to tell (control messages travel then)
    multi_node: bool

    def in_room(self, sid: str, room: Any) -> bool: ...
    def connected_sid(self, eio_sid: str, namespace: str) -> str | None: ...
    def has_room(self, namespace: str, room: Any) -> bool: ...
    def on_control(self, kind: str, handler: ControlHandler) -> None: ...
    async def publish_control(self, kind: str, payload: dict[str, Any]) -> None:
        """A control message for the other nodes' handlers of `kind`."""
