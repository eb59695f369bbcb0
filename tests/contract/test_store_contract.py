"""The contract every `Store` meets (run against each implementation by the `store`
fixture), then tests of what only the SQLite store promises (files, schema, pragmas)."""
from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rt.backends import ChatMessage, Note, Store, User
from rt.backends.sqlite_file import BUSY_TIMEOUT_MS, MIGRATIONS, SCHEMA_VERSION, transaction
from rt.backends.sqlite_store import SqliteStore
from rt.core.errors import StoreError

pytestmark = pytest.mark.asyncio


# unknown ids --------------------------------------------------------------------------
async def test_unknown_ids_give_none_or_false(store: Store) -> None:
    assert await store.get_user("nobody") is None
    assert await store.delete_user("nobody") is False
    assert await store.get_channel_members("nochan") is None
    assert await store.update_channel_members("nochan", ["a"], []) is False
    assert await store.get_channel_members("nochan") is None  # not created by the update
    assert await store.delete_channel("nochan") is False
    assert await store.channels_of_user("nobody") == []
    assert await store.get_channel_read("nochan", "nobody") is None
    assert await store.get_chat_read("nochat", "nobody") is None
    assert await store.get_chat_message("nochat", "nomsg") is None
    assert await store.get_note("nonote") is None
    assert await store.delete_note("nonote") is False
    assert await store.load_document("nodoc") is None
    assert await store.delete_document("nodoc") is False
    assert await store.document_stats() == (0, 0)


# users --------------------------------------------------------------------------------
async def test_user_put_get_update_delete(store: Store) -> None:
    await store.put_user(User("u1", "Ann"))
    assert await store.get_user("u1") == User("u1", "Ann", "user", False, None)

    await store.put_user(User("u1", "Ann B.", role="admin", disabled=True))
    assert await store.get_user("u1") == User("u1", "Ann B.", "admin", True, None)

    assert await store.delete_user("u1") is True
    assert await store.get_user("u1") is None
    assert await store.delete_user("u1") is False


async def test_many_user_lookups_at_once(store: Store) -> None:
    # a reconnect storm: many connects ask in the same turn, some for the same user, some
    # for users that do not exist (the SQLite store answers them all with one read)
    for i in range(0, 1200, 2):
        await store.put_user(User(f"u{i}", f"User {i}", disabled=i % 4 == 0))
    asked = [f"u{i % 1200}" for i in range(1500)]
    got = await asyncio.wait_for(asyncio.gather(*(store.get_user(u) for u in asked)), 30)
    for user_id, user in zip(asked, got):
        i = int(user_id[1:])
        if i % 2:
            assert user is None
        else:
            assert user == User(user_id, f"User {i}", "user", i % 4 == 0, None)


async def test_put_user_keeps_last_active(store: Store) -> None:
    await store.put_user(User("u1", "Ann", last_active_at=100.0))
    # A PUT from the API carries no time: the stored one stays.
    await store.put_user(User("u1", "Ann", role="admin"))
    assert (await store.get_user("u1")).last_active_at == 100.0
    # Nor does a PUT move it backwards.
    await store.put_user(User("u1", "Ann", last_active_at=50.0))
    assert (await store.get_user("u1")).last_active_at == 100.0


async def test_set_last_active_is_coalesced_and_never_goes_backwards(store: Store) -> None:
    await store.put_user(User("a", "A"))
    await store.put_user(User("b", "B"))
    await store.set_last_active({"a": 10.0, "b": 20.0, "ghost": 30.0})
    assert (await store.get_user("a")).last_active_at == 10.0
    assert (await store.get_user("b")).last_active_at == 20.0
    assert await store.get_user("ghost") is None  # unknown users are ignored, not created

    await store.set_last_active({"a": 5.0, "b": 25.0})  # a's older time is ignored
    assert (await store.get_user("a")).last_active_at == 10.0
    assert (await store.get_user("b")).last_active_at == 25.0

    await store.set_last_active({})
    assert (await store.get_user("b")).last_active_at == 25.0


async def test_delete_user_removes_channel_memberships(store: Store) -> None:
    await store.put_user(User("u1", "Ann"))
    await store.put_channel("c1", ["u1", "u2"])
    await store.put_channel("c2", ["u1"])
    assert await store.delete_user("u1") is True
    assert await store.channels_of_user("u1") == []
    assert await store.get_channel_members("c1") == ["u2"]
    assert await store.get_channel_members("c2") == []


# channels -----------------------------------------------------------------------------
async def test_channel_put_update_delete(store: Store) -> None:
    await store.put_channel("c1", ["u1", "u2"])
    assert sorted(await store.get_channel_members("c1")) == ["u1", "u2"]

    assert await store.update_channel_members("c1", add=["u3", "u1"], remove=["u2"]) is True
    assert sorted(await store.get_channel_members("c1")) == ["u1", "u3"]

    await store.put_channel("c1", ["u4"])  # PUT replaces the member list
    assert await store.get_channel_members("c1") == ["u4"]

    await store.put_channel("empty", [])
    assert await store.get_channel_members("empty") == []

    assert await store.delete_channel("c1") is True
    assert await store.get_channel_members("c1") is None
    assert await store.channels_of_user("u4") == []
    assert await store.delete_channel("c1") is False


async def test_channels_of_user(store: Store) -> None:
    await store.put_channel("c1", ["u1", "u2"])
    await store.put_channel("c2", ["u1"])
    await store.put_channel("c3", ["u2"])
    assert sorted(await store.channels_of_user("u1")) == ["c1", "c2"]
    assert sorted(await store.channels_of_user("u2")) == ["c1", "c3"]

    await store.update_channel_members("c2", add=["u2"], remove=["u1"])
    assert await store.channels_of_user("u1") == ["c1"]
    assert sorted(await store.channels_of_user("u2")) == ["c1", "c2", "c3"]


async def test_channel_read_markers(store: Store) -> None:
    await store.put_channel("c1", ["u1", "u2"])
    assert await store.get_channel_read("c1", "u1") is None

    await store.set_channel_read("c1", "u1", 100.0)
    await store.set_channel_read("c1", "u2", 200.0)
    assert await store.get_channel_read("c1", "u1") == 100.0
    assert await store.get_channel_read("c1", "u2") == 200.0

    # The marker belongs to the membership: a PUT keeps it for members who stay...
    await store.put_channel("c1", ["u1", "u3"])
    assert await store.get_channel_read("c1", "u1") == 100.0
    # ...and it goes with a member who leaves.
    assert await store.get_channel_read("c1", "u2") is None
    # A non-member has none.
    await store.set_channel_read("c1", "outsider", 300.0)
    assert await store.get_channel_read("c1", "outsider") is None


# chats --------------------------------------------------------------------------------
async def test_chat_read_markers(store: Store) -> None:
    await store.set_chat_read("chat1", "u1", 100.0)
    await store.set_chat_read("chat1", "u2", 150.0)
    assert await store.get_chat_read("chat1", "u1") == 100.0
    assert await store.get_chat_read("chat1", "u2") == 150.0
    await store.set_chat_read("chat1", "u1", 120.0)
    assert await store.get_chat_read("chat1", "u1") == 120.0
    assert await store.get_chat_read("chat2", "u1") is None


async def _reads_of(store: Store, user_id: str, chat_ids) -> dict[str, float]:
    got = {c: await store.get_chat_read(c, user_id) for c in chat_ids}
    return {c: at for c, at in got.items() if at is not None}


async def test_chat_read_markers_are_bounded_per_user(store: Store) -> None:
    chats = [f"c{i}" for i in range(10)]
    for chat, at in (("c1", 10.0), ("c2", 20.0), ("c3", 30.0)):
        await store.set_chat_read(chat, "u1", at, keep=3)
    await store.set_chat_read("c1", "u2", 5.0, keep=3)  # another user's markers apart
    assert await _reads_of(store, "u1", chats) == {"c1": 10.0, "c2": 20.0, "c3": 30.0}

    await store.set_chat_read("c4", "u1", 40.0, keep=3)  # one more: the oldest goes
    assert await _reads_of(store, "u1", chats) == {"c2": 20.0, "c3": 30.0, "c4": 40.0}
    await store.set_chat_read("c2", "u1", 50.0, keep=3)  # a refresh is not one more
    assert await _reads_of(store, "u1", chats) == {"c2": 50.0, "c3": 30.0, "c4": 40.0}
    await store.set_chat_read("c5", "u1", 45.0, keep=3)  # oldest by time, not by insertion
    assert await _reads_of(store, "u1", chats) == {"c2": 50.0, "c4": 40.0, "c5": 45.0}
    # a marker older than all others (a clock step) is kept; the oldest other one goes
    await store.set_chat_read("c6", "u1", 1.0, keep=3)
    assert await _reads_of(store, "u1", chats) == {"c2": 50.0, "c5": 45.0, "c6": 1.0}
    # a lower cap (reload) applies at the next new marker, all at once
    await store.set_chat_read("c7", "u1", 60.0, keep=1)
    assert await _reads_of(store, "u1", chats) == {"c7": 60.0}
    # equal times: the lower chat id goes first
    await store.set_chat_read("c9", "u1", 60.0, keep=2)
    await store.set_chat_read("c8", "u1", 60.0, keep=2)
    assert await _reads_of(store, "u1", chats) == {"c8": 60.0, "c9": 60.0}
    # without a cap nothing is evicted; the other user was never touched
    await store.set_chat_read("c0", "u1", 70.0)
    assert await _reads_of(store, "u1", chats) == {"c0": 70.0, "c8": 60.0, "c9": 60.0}
    assert await _reads_of(store, "u2", chats) == {"c1": 5.0}


async def test_chat_read_markers_bounded_under_concurrent_writes(store: Store) -> None:
    chats = [f"chat-{i:03d}" for i in range(60)]
    await asyncio.gather(*(store.set_chat_read(c, "u1", 1000.0 + i, keep=10)
                           for i, c in enumerate(chats)))
    kept = await _reads_of(store, "u1", chats)
    assert len(kept) == 10
    # whatever order the writes landed in, the newest one is always kept
    assert kept[chats[-1]] == 1059.0


async def test_redis_read_markers_of_the_per_chat_layout_are_read_and_moved(
        store: Store) -> None:
    from rt.backends.redis_store import RedisStore

    if not isinstance(store, RedisStore):
        pytest.skip("a Redis layout question")
    legacy = store._chat("old", "reads")  # where markers lived before the per-user set
    await store._run(lambda c: c.hset(legacy, "u1", repr(12.5)))
    assert await store.get_chat_read("old", "u1") == 12.5
    await store.set_chat_read("old", "u1", 20.0, keep=2)  # moves it
    assert await store._run(lambda c: c.hget(legacy, "u1")) is None
    assert await store.get_chat_read("old", "u1") == 20.0
    for chat, at in (("a", 30.0), ("b", 40.0)):
        await store.set_chat_read(chat, "u1", at, keep=2)
    assert await store.get_chat_read("old", "u1") is None  # evicted, not resurrected


async def test_chat_messages_round_trip(store: Store) -> None:
    done = ChatMessage("chat1", "m1", "u1", "Hello, world", "done",
                       {"prompt_tokens": 3, "completion_tokens": 5, "extra": {"a": [1.5]}},
                       1000.5)
    cancelled = ChatMessage("chat1", "m2", "u1", "Hel", "cancelled", None, 1001.0)
    await store.put_chat_message(done)
    await store.put_chat_message(cancelled)
    assert await store.get_chat_message("chat1", "m1") == done
    assert await store.get_chat_message("chat1", "m2") == cancelled
    assert await store.get_chat_message("chat2", "m1") is None

    # Putting the same message again replaces it.
    errored = ChatMessage("chat1", "m2", "u1", "", "error", None, 1002.0)
    await store.put_chat_message(errored)
    assert await store.get_chat_message("chat1", "m2") == errored


# notes --------------------------------------------------------------------------------
async def test_notes_with_grants(store: Store) -> None:
    note = Note("n1", owner="u1", read=frozenset({"u2", "u3"}), write=frozenset({"u4"}))
    await store.put_note(note)
    assert await store.get_note("n1") == note

    await store.put_note(Note("n2", owner="u9"))
    assert await store.get_note("n2") == Note("n2", "u9", frozenset(), frozenset())

    # A PUT replaces owner and grants (revocation).
    revoked = Note("n1", owner="u2", read=frozenset({"u3"}), write=frozenset())
    await store.put_note(revoked)
    assert await store.get_note("n1") == revoked

    assert await store.delete_note("n1") is True
    assert await store.get_note("n1") is None
    assert await store.delete_note("n1") is False
    assert await store.get_note("n2") is not None


# documents ----------------------------------------------------------------------------
async def test_append_gives_increasing_seqs_and_load_returns_them_in_order(store: Store) -> None:
    before = time.time()
    seqs = [await store.append_update("note:a", bytes([i]) * (i + 1)) for i in range(5)]
    assert all(a < b for a, b in zip(seqs, seqs[1:]))
    # Sequences are per document.
    other = await store.append_update("note:b", b"x")

    doc = await store.load_document("note:a")
    assert doc is not None
    assert doc.id == "note:a"
    assert doc.snapshot is None
    assert doc.updates == [bytes([i]) * (i + 1) for i in range(5)]
    assert doc.last_seq == seqs[-1]
    assert doc.content is None
    assert before - 1 <= doc.updated_at <= time.time() + 1
    assert (await store.load_document("note:b")).last_seq == other


async def test_concurrent_appends_get_distinct_increasing_seqs(store: Store) -> None:
    async def append(i: int) -> tuple[int, bytes]:
        await asyncio.sleep(0)
        update = f"update-{i}".encode()
        return await store.append_update("note:busy", update), update

    results = await asyncio.gather(*(append(i) for i in range(200)))
    seqs = [seq for seq, _ in results]
    assert len(set(seqs)) == len(seqs)
    # The stored order is the seq order.
    doc = await store.load_document("note:busy")
    assert doc.updates == [update for _, update in sorted(results)]
    assert doc.last_seq == max(seqs)


async def test_first_update_only_into_a_document_that_never_had_one(store: Store) -> None:
    first = await store.append_first_update("note:a", b"seed")
    assert first is not None
    assert await store.append_first_update("note:a", b"other seed") is None  # nothing changed
    doc = await store.load_document("note:a")
    assert (doc.snapshot, doc.updates, doc.last_seq) == (None, [b"seed"], first)
    assert await store.document_stats() == (1, 4)
    # the log goes on as usual after it
    later = await store.append_update("note:a", b"u1")
    assert later > first
    assert (await store.load_document("note:a")).updates == [b"seed", b"u1"]

    # rendered content alone is no update: a seed is still taken, the content kept
    await store.set_document_content("note:b", "early")
    seq = await store.append_first_update("note:b", b"seed-b")
    assert seq is not None
    doc = await store.load_document("note:b")
    assert (doc.updates, doc.last_seq, doc.content) == ([b"seed-b"], seq, "early")

    # a compacted document has had updates, even with an empty log
    await store.compact_document("note:a", later, b"snap")
    assert (await store.load_document("note:a")).updates == []
    assert await store.append_first_update("note:a", b"late seed") is None
    doc = await store.load_document("note:a")
    assert (doc.snapshot, doc.updates, doc.last_seq) == (b"snap", [], later)

    # a deleted document starts afresh
    assert await store.delete_document("note:a") is True
    assert await store.append_first_update("note:a", b"new seed") is not None
    assert (await store.load_document("note:a")).updates == [b"new seed"]
    assert await store.document_stats() == (2, len(b"seed-b") + len(b"new seed"))


async def test_concurrent_first_updates_store_exactly_one(store: Store) -> None:
    async def seed(i: int) -> tuple[int | None, bytes]:
        await asyncio.sleep(0)
        update = f"seed-{i}".encode()
        return await store.append_first_update("note:race", update), update

    results = await asyncio.gather(*(seed(i) for i in range(50)))
    won = [(seq, update) for seq, update in results if seq is not None]
    assert len(won) == 1
    doc = await store.load_document("note:race")
    assert doc.updates == [won[0][1]] and doc.last_seq == won[0][0]
    assert await store.document_stats() == (1, len(won[0][1]))


async def test_compaction_keeps_later_updates(store: Store) -> None:
    seqs = [await store.append_update("note:a", f"u{i}".encode()) for i in range(5)]
    await store.compact_document("note:a", seqs[2], b"snapshot-0-2")
    later = await store.append_update("note:a", b"u5")
    assert later > seqs[-1]

    doc = await store.load_document("note:a")
    assert doc.snapshot == b"snapshot-0-2"
    assert doc.updates == [b"u3", b"u4", b"u5"]
    assert doc.last_seq == later

    # Compacting everything leaves the snapshot alone.
    await store.compact_document("note:a", later, b"snapshot-0-5")
    doc = await store.load_document("note:a")
    assert (doc.snapshot, doc.updates, doc.last_seq) == (b"snapshot-0-5", [], later)


async def test_document_tail_is_what_comes_after_a_seq(store: Store) -> None:
    """A copy current up to a seq reads only what comes after it; a copy the log was
    compacted past learns that it must load the whole document."""
    assert await store.document_tail("note:a", 0) is None
    seqs = [await store.append_update("note:a", f"u{i}".encode()) for i in range(5)]
    await store.set_document_content("note:a", "text")
    tail = await store.document_tail("note:a", seqs[1])
    assert tail is not None and tail.updates == [b"u2", b"u3", b"u4"]
    assert (tail.last_seq, tail.content, tail.stored_bytes, tail.log_count) == (
        seqs[-1], "text", 10, 5)
    assert (await store.document_tail("note:a", seqs[-1])).updates == []  # current
    assert (await store.document_tail("note:a", 0)).updates == [f"u{i}".encode()
                                                                 for i in range(5)]
    await store.compact_document("note:a", seqs[2], b"snapshot-0-2")
    tail = await store.document_tail("note:a", seqs[2])  # exactly what the snapshot covers
    assert tail.updates == [b"u3", b"u4"]
    assert (tail.stored_bytes, tail.log_count) == (len(b"snapshot-0-2") + 4, 2)
    assert (await store.document_tail("note:a", seqs[1])).updates is None  # compacted past
    await store.compact_document("note:a", seqs[-1], b"snapshot-0-4")
    tail = await store.document_tail("note:a", seqs[-1])
    assert (tail.updates, tail.log_count) == ([], 0)
    assert (await store.document_tail("note:a", seqs[3])).updates is None


async def test_compaction_is_atomic_with_concurrent_appends_and_loads(store: Store) -> None:
    for i in range(10):
        await store.append_update("note:a", f"u{i}".encode())
    first = await store.load_document("note:a")

    async def load() -> None:
        # Whenever a load runs, it sees either the old or the new state, never a mix.
        doc = await store.load_document("note:a")
        if doc.snapshot is None:
            assert doc.updates[:10] == first.updates
        else:
            assert doc.snapshot == b"snap" and doc.updates[:5] == first.updates[5:]

    appends = [store.append_update("note:a", f"late{i}".encode()) for i in range(10)]
    loads = [load() for _ in range(10)]
    await asyncio.gather(*appends[:5], *loads[:5], store.compact_document("note:a", 5, b"snap"),
                         *appends[5:], *loads[5:])

    doc = await store.load_document("note:a")
    assert doc.snapshot == b"snap"
    assert doc.updates[:5] == [f"u{i}".encode() for i in range(5, 10)]
    assert sorted(doc.updates[5:]) == sorted(f"late{i}".encode() for i in range(10))
    assert doc.last_seq == 20


async def test_compacting_an_unknown_document_creates_nothing(store: Store) -> None:
    await store.compact_document("note:gone", 3, b"snap")
    assert await store.load_document("note:gone") is None
    assert await store.document_stats() == (0, 0)


async def test_document_content(store: Store) -> None:
    await store.append_update("note:a", b"u0")
    await store.set_document_content("note:a", "# Title\n\nbody")
    doc = await store.load_document("note:a")
    assert doc.content == "# Title\n\nbody"
    assert doc.updates == [b"u0"]
    await store.set_document_content("note:a", "v2")
    assert (await store.load_document("note:a")).content == "v2"

    # Content may arrive before any update: the document then exists, empty.
    await store.set_document_content("note:b", "early")
    doc = await store.load_document("note:b")
    assert (doc.snapshot, doc.updates, doc.last_seq, doc.content) == (None, [], 0, "early")


async def test_delete_document(store: Store) -> None:
    await store.append_update("note:a", b"u0")
    await store.compact_document("note:a", 1, b"snap")
    await store.append_update("note:a", b"u1")
    await store.append_update("note:b", b"other")
    assert await store.delete_document("note:a") is True
    assert await store.load_document("note:a") is None
    assert await store.delete_document("note:a") is False
    assert (await store.load_document("note:b")).updates == [b"other"]
    # A document appended to after deletion starts afresh.
    await store.append_update("note:a", b"new")
    doc = await store.load_document("note:a")
    assert (doc.snapshot, doc.updates) == (None, [b"new"])


async def test_document_stats(store: Store) -> None:
    assert await store.document_stats() == (0, 0)
    for _ in range(4):
        await store.append_update("note:a", b"x" * 10)
    await store.append_update("note:b", b"y" * 7)
    assert await store.document_stats() == (2, 47)

    await store.compact_document("note:a", 3, b"s" * 5)  # 3 updates -> 5-byte snapshot
    assert await store.document_stats() == (2, 5 + 10 + 7)

    await store.set_document_content("note:c", "content is not counted")
    assert await store.document_stats() == (3, 22)

    await store.delete_document("note:a")
    assert await store.document_stats() == (2, 7)


# lifecycle ----------------------------------------------------------------------------
async def test_ping_and_idempotent_close(store: Store) -> None:
    await store.ping()
    await store.close()
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()
    with pytest.raises(StoreError):
        await store.get_user("u1")


# SQLite only --------------------------------------------------------------------------
WAIT = 10.0


def _sqlite_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rt-sqlite")]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "rt.sqlite3"


async def test_sqlite_constructor_does_no_io(db_path: Path) -> None:
    store = SqliteStore(str(db_path))
    assert not db_path.parent.exists()
    assert _sqlite_threads() == []
    await store.close()  # closing a never-opened store is harmless


async def test_sqlite_open_and_close_own_their_two_threads(db_path: Path) -> None:
    store = SqliteStore(str(db_path))
    await store.open()
    await store.open()  # already open: nothing more
    assert sorted(t.name.rsplit("_", 1)[0] for t in _sqlite_threads()) == [
        "rt-sqlite", "rt-sqlite-read"]  # the writer, the reader
    await store.close()
    assert _sqlite_threads() == []


async def test_sqlite_reads_do_not_queue_behind_writes(db_path: Path) -> None:
    """A user's read is answered while the writer thread is busy (an editor's fsynced
    updates, one after another), and it sees every write committed before it began."""
    store = SqliteStore(str(db_path))
    await store.open()
    try:
        await store.put_user(User("u1", "Ann"))
        gate = threading.Event()
        busy = asyncio.ensure_future(store._run(lambda db: gate.wait(WAIT)))
        try:
            user = await asyncio.wait_for(store.get_user("u1"), WAIT / 2)
            assert user is not None and user.name == "Ann" and not busy.done()
        finally:
            gate.set()
            await asyncio.wait_for(busy, WAIT)
    finally:
        await store.close()


async def test_sqlite_user_lookups_of_one_turn_share_a_read(db_path: Path) -> None:
    """The lookups asked together: a caller that gives up does not hurt the others, and
    a failed read fails each of them with a StoreError, changing nothing."""
    store = SqliteStore(str(db_path))
    await store.open()
    try:
        await store.put_user(User("u1", "Ann"))
        reads: list[int] = []
        real_read = store._read

        async def counted(fn):  # the reading thread's calls, counted
            reads.append(1)
            return await real_read(fn)

        store._read = counted  # type: ignore[method-assign]
        first, gone, third = (asyncio.ensure_future(store.get_user(u))
                              for u in ("u1", "u1", "nobody"))
        await asyncio.sleep(0)  # all three asked: the read is on its way
        gone.cancel()
        assert await asyncio.wait_for(first, WAIT) == User("u1", "Ann", "user", False, None)
        assert await asyncio.wait_for(third, WAIT) is None
        assert reads == [1]

        async def failing(fn):
            raise StoreError("SQLite store: disk gone")

        store._read = failing  # type: ignore[method-assign]
        both = await asyncio.wait_for(asyncio.gather(
            store.get_user("u1"), store.get_user("u2"), return_exceptions=True), WAIT)
        assert [type(e) for e in both] == [StoreError, StoreError]
        store._read = real_read  # type: ignore[method-assign]
        assert await store.get_user("u1") == User("u1", "Ann", "user", False, None)
    finally:
        await store.close()
    with pytest.raises(StoreError):  # closed: refused, as every read is
        await asyncio.wait_for(store.get_user("u1"), WAIT)


async def test_sqlite_data_survives_close_and_reopen(db_path: Path) -> None:
    store = SqliteStore(str(db_path))
    await store.open()
    await store.put_user(User("u1", "Ann", role="admin", disabled=True))
    await store.set_last_active({"u1": 123.5})
    await store.put_channel("c1", ["u1", "u2"])
    await store.set_channel_read("c1", "u1", 50.0)
    await store.set_chat_read("chat1", "u1", 60.0)
    message = ChatMessage("chat1", "m1", "u1", "hi", "done", {"total_tokens": 2}, 70.0)
    await store.put_chat_message(message)
    note = Note("n1", "u1", frozenset({"u2"}), frozenset({"u3"}))
    await store.put_note(note)
    for i in range(3):
        await store.append_update("note:n1", f"u{i}".encode())
    await store.compact_document("note:n1", 2, b"snap")
    await store.set_document_content("note:n1", "text")
    before = await store.load_document("note:n1")
    await store.close()

    reopened = SqliteStore(str(db_path))
    await reopened.open()
    try:
        assert await reopened.get_user("u1") == User("u1", "Ann", "admin", True, 123.5)
        assert await reopened.get_channel_members("c1") == ["u1", "u2"]
        assert await reopened.channels_of_user("u1") == ["c1"]
        assert await reopened.get_channel_read("c1", "u1") == 50.0
        assert await reopened.get_chat_read("chat1", "u1") == 60.0
        assert await reopened.get_chat_message("chat1", "m1") == message
        assert await reopened.get_note("n1") == note
        assert await reopened.load_document("note:n1") == before
        assert before.snapshot == b"snap" and before.updates == [b"u2"]
        # Sequence numbers continue where they stopped.
        assert await reopened.append_update("note:n1", b"u3") == before.last_seq + 1
        assert await reopened.document_stats() == (1, len(b"snap") + 4)
    finally:
        await reopened.close()


async def test_sqlite_first_update_race_between_two_stores_on_one_file(db_path: Path) -> None:
    """Two stores (threads, connections) on one file, as two processes would be: the
    check and the append are one write transaction, so exactly one seed is stored."""
    one, two = SqliteStore(str(db_path)), SqliteStore(str(db_path))
    await one.open()
    await two.open()
    try:
        for n in range(20):
            doc = f"note:{n}"
            results = await asyncio.gather(one.append_first_update(doc, b"one"),
                                           two.append_first_update(doc, b"two"))
            assert sorted(r is None for r in results) == [False, True]
            stored = await two.load_document(doc)
            assert stored.updates == ([b"one"] if results[0] is not None else [b"two"])
    finally:
        await one.close()
        await two.close()


async def test_sqlite_schema_version_and_pragmas(db_path: Path) -> None:
    store = SqliteStore(str(db_path))
    await store.open()
    try:
        # White-box: the per-connection settings, read on the store's own thread.
        sync, busy, fks = await store._run(lambda db: tuple(
            db.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("synchronous", "busy_timeout", "foreign_keys")
        ))
        assert (sync, busy, fks) == (2, BUSY_TIMEOUT_MS, 1)  # 2 = FULL
    finally:
        await store.close()

    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


# each process waits for the same moment, then opens the file (`connect`, as a worker's store)
_OPEN_AT_ONCE = """
import sys, time
from rt.backends.sqlite_file import connect, connect_reader
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
db = connect(sys.argv[1])
connect_reader(sys.argv[1]).close()
db.close()
"""


async def test_sqlite_file_opened_by_several_processes_at_once(tmp_path: Path) -> None:
    # the workers of one box start together on a new data directory: the switch to WAL
    # takes the file for itself, and two processes asking at once are refused at once
    # (SQLITE_BUSY, no busy wait: it would deadlock), so it is made under the same lock as
    # the migration. Several rounds, six processes each (without that lock, 3 of 90 such
    # opens failed): every one opens the file.
    for attempt in range(8):
        path = tmp_path / f"round{attempt}" / "rt.sqlite3"
        start = time.time() + 1.0
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-c", _OPEN_AT_ONCE, str(path), str(start),
            stderr=asyncio.subprocess.PIPE) for _ in range(6)]
        results = [await asyncio.wait_for(proc.communicate(), 30) for proc in procs]
        errors = [err.decode()[-300:] for proc, (_, err) in zip(procs, results, strict=True)
                  if proc.returncode != 0]
        assert errors == [], f"round {attempt}: {errors}"
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            db.close()

async def test_sqlite_migrates_a_version_1_file(db_path: Path) -> None:
    # a data directory of the first release: schema 1, read markers without the index
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(db_path)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    db.executemany("INSERT INTO chat_reads (chat_id, user_id, at) VALUES (?, 'u1', ?)",
                   [(f"c{i}", float(i)) for i in range(5)])
    db.commit()
    db.close()

    store = SqliteStore(str(db_path))
    await store.open()
    try:
        assert await store.get_chat_read("c4", "u1") == 4.0  # the markers came along
        await store.set_chat_read("c5", "u1", 5.0, keep=3)  # older files are bounded too
        assert [await store.get_chat_read(f"c{i}", "u1") for i in range(6)] == [
            None, None, None, 3.0, 4.0, 5.0]
    finally:
        await store.close()
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index'"
                          " AND name = 'chat_reads_by_user'").fetchone() == (1,)
    finally:
        db.close()


async def test_sqlite_refuses_a_newer_schema(db_path: Path) -> None:
    store = SqliteStore(str(db_path))
    await store.open()
    await store.close()
    db = sqlite3.connect(db_path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(StoreError, match="newer"):
        await SqliteStore(str(db_path)).open()
    assert _sqlite_threads() == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT channel_id FROM channel_members WHERE user_id = ? ORDER BY channel_id",
        "DELETE FROM channel_members WHERE user_id = ?",
        "SELECT blob FROM document_updates WHERE document_id = ? ORDER BY seq",
        "DELETE FROM document_updates WHERE document_id = ? AND seq <= ?",
        # set_chat_read with a cap: counting a user's markers and evicting the oldest
        "SELECT COUNT(*) FROM chat_reads WHERE user_id = ?",
        "DELETE FROM chat_reads WHERE user_id = ? AND chat_id IN ("
        "  SELECT chat_id FROM chat_reads WHERE user_id = ? AND chat_id != ?"
        "  ORDER BY at, chat_id LIMIT ?)",
    ],
)
async def test_sqlite_hot_paths_use_indexes(db_path: Path, sql: str) -> None:
    store = SqliteStore(str(db_path))
    await store.open()
    await store.close()
    db = sqlite3.connect(db_path)
    try:
        params = (None,) * sql.count("?")
        plan = " | ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    finally:
        db.close()
    assert "SCAN" not in plan and "USING" in plan, plan


async def test_sqlite_disk_full_is_store_error_and_rolls_back(db_path: Path) -> None:
    store = SqliteStore(str(db_path))
    await store.open()
    try:
        seq = await store.append_update("note:a", b"small")
        # White-box: cap the file at its current size, as a full disk would.
        await store._run(lambda db: db.execute(
            "PRAGMA max_page_count = {}".format(db.execute("PRAGMA page_count").fetchone()[0])
        ))
        with pytest.raises(StoreError, match="full"):
            await store.append_update("note:a", os.urandom(1 << 20))
        # The failed append left no open transaction and consumed no seq.
        assert (await store.load_document("note:a")).updates == [b"small"]
        await store._run(lambda db: db.execute("PRAGMA max_page_count = 1073741823"))
        assert await store.append_update("note:a", b"next") == seq + 1
        await store.ping()
    finally:
        await store.close()


async def test_sqlite_failed_transaction_rolls_back(db_path: Path) -> None:
    store = SqliteStore(str(db_path))
    await store.open()

    def half_done(db: sqlite3.Connection) -> None:
        with transaction(db):
            db.execute("INSERT INTO users (id, name, role) VALUES ('u1', 'Ann', 'user')")
            raise ValueError("fails half-way")

    try:
        # White-box: a transaction that fails half-way leaves nothing behind, and no
        # transaction open that would make every later write fail.
        with pytest.raises(ValueError):
            await store._run(half_done)
        assert await store.get_user("u1") is None
        await store.put_user(User("u2", "Bob"))
        await store.set_last_active({"u2": 1.0})
        assert (await store.get_user("u2")).last_active_at == 1.0
    finally:
        await store.close()


@contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make a file or directory unwritable, for root too."""
    mode = path.stat().st_mode
    path.chmod(mode & ~0o222)
    immutable = False
    try:
        if os.geteuid() == 0:
            # root ignores file modes; the immutable attribute stops root as well.
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run(
                [chattr, "+i", str(path)], capture_output=True
            ).returncode:
                pytest.skip("running as root and cannot set the immutable attribute")
            immutable = True
        yield
    finally:
        if immutable:
            subprocess.run([shutil.which("chattr"), "-i", str(path)], check=True)
        path.chmod(mode)


async def _make_store(db_path: Path) -> None:
    store = SqliteStore(str(db_path))
    await store.open()
    await store.put_user(User("u1", "Ann"))
    await store.close()


async def _assert_intact(db_path: Path) -> None:
    store = SqliteStore(str(db_path))
    await store.open()
    try:
        assert await store.get_user("u1") == User("u1", "Ann")
    finally:
        await store.close()


async def test_sqlite_read_only_file_is_store_error(db_path: Path) -> None:
    await _make_store(db_path)
    with _read_only(db_path):
        with pytest.raises(StoreError, match="readonly"):
            await SqliteStore(str(db_path)).open()
        assert _sqlite_threads() == []
    await _assert_intact(db_path)


@pytest.mark.parametrize("target", ["existing file", "new file", "new directory"])
async def test_sqlite_read_only_directory_is_store_error(db_path: Path, target: str) -> None:
    await _make_store(db_path)
    path = {
        "existing file": db_path,
        "new file": db_path.parent / "other.sqlite3",
        "new directory": db_path.parent / "sub" / "rt.sqlite3",
    }[target]
    with _read_only(db_path.parent):
        with pytest.raises(StoreError, match=str(path)):
            await SqliteStore(str(path)).open()
        assert _sqlite_threads() == []
    await _assert_intact(db_path)
