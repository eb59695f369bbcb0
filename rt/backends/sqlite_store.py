"""The durable store of a single node: one SQLite file.

Every write runs on one dedicated worker thread, so the event loop never waits on disk and
the connection is only ever touched by the thread that opened it. Methods are coroutines
that hand a closure to that thread and await it. Because the thread runs one closure at a
time, each closure sees the database without interleaving from this process; explicit
transactions still make multi-step changes atomic on disk and towards other processes
(e.g. `rt-appliance token` registering a user while the server runs). Reads run on a second
thread with a connection of their own (WAL lets it read beside the writer), so that a
user's read never queues behind another user's fsynced writes: an editor typing at full
speed fsyncs every update. A read sees every write committed before it began. Opening the
file, the schema and the transactions are in sqlite_file.py.

Readiness (`ping`) reads, it never writes: every real write tells the store how the write
path fares, so a probe needs no fsync of its own to know (see `ping`).

Longer than most modules: it is the whole Store contract (users, channels, read markers,
chat messages, notes, documents) in SQL, each method a closure for the writing or the
reading thread; split by kind of record, each part would repeat that plumbing.
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..core.errors import StoreError
from . import ChatMessage, DocumentTail, Note, StoredDocument, User
from .sqlite_file import (
    check_disk,
    check_readable,
    check_writable,
    connect,
    connect_reader,
    write_path_failed,
)
from .sqlite_file import read as _read_transaction
from .sqlite_file import transaction as _transaction

T = TypeVar("T")

# ids in one `IN (...)` of a batched user lookup (SQLite allows 32766 parameters)
_IDS_PER_QUERY = 500

class SqliteStore:
    """`Store` on a SQLite file. Construct cheaply; `open()` does the I/O."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._reader: ThreadPoolExecutor | None = None  # reads, on a connection of their own
        self._reader_db: sqlite3.Connection | None = None
        # Why the last write that failed for a reason outside its statement failed (see
        # sqlite_file.WRITE_PATH_ERRORS), until a write succeeds again; `ping` reports it.
        self._write_failure: str | None = None
        # user id -> the callers waiting for it, until the end of this turn (get_user)
        self._user_reads: dict[str, list[asyncio.Future[User | None]]] = {}

    # plumbing ------------------------------------------------------------------------
    async def _submit(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"SQLite store {self.path}: {_detail(exc)}") from exc

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor, db = self._executor, self._db
        if executor is None or db is None:
            raise StoreError(f"SQLite store {self.path} is not open")

        def call() -> T:
            # on the worker thread: the outcome of the write path, learnt from real writes
            changes = db.total_changes
            try:
                result = fn(db)
            except sqlite3.DatabaseError as exc:
                if write_path_failed(exc):
                    self._write_failure = _detail(exc)
                raise
            if db.total_changes != changes:
                self._write_failure = None
            return result

        return await self._submit(executor, call)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read, on the reading thread."""
        reader, db = self._reader, self._reader_db
        if reader is None or db is None:
            raise StoreError(f"SQLite store {self.path} is not open")
        return await self._submit(reader, lambda: fn(db))

    # lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rt-sqlite")
        try:
            self._db = await self._submit(executor, lambda: connect(self.path))
        except OSError as exc:  # creating the directory failed
            executor.shutdown(wait=True)
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        except BaseException:
            executor.shutdown(wait=True)
            raise
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rt-sqlite-read")
        try:
            self._reader_db = await self._submit(reader, lambda: connect_reader(self.path))
        except BaseException:
            reader.shutdown(wait=True)
            await self._submit(executor, self._db.close)
            executor.shutdown(wait=True)
            raise
        self._executor, self._reader = executor, reader

    async def close(self) -> None:
        executor, db = self._executor, self._db
        if executor is None:
            return
        # Mark closed first: new calls fail at once, calls already queued on the thread
        # still run before the connection is closed (the thread is FIFO).
        reader, reader_db = self._reader, self._reader_db
        self._executor = self._db = self._reader = self._reader_db = None
        try:
            if reader is not None and reader_db is not None:
                await self._submit(reader, reader_db.close)
            if db is not None:
                await self._submit(executor, db.close)
        finally:
            if reader is not None:
                reader.shutdown(wait=True)
            executor.shutdown(wait=True)

    async def ping(self) -> None:
        """Ready without writing: the file system is writable with room left (statvfs), the
        file answers a read on the worker thread, and the last real write did not fail
        on the write path. Only after such a failure does this commit a write of its own:
        the one way to learn that writes work again (no other write may come while the
        node is out of service)."""
        check_disk(os.path.dirname(self.path) or ".")
        if self._write_failure is None:
            await self._read(check_readable)
            return
        await self._run(check_writable)  # raises (and keeps the failure) while it persists
        self._write_failure = None

    # users ---------------------------------------------------------------------------
    async def put_user(self, user: User) -> None:
        def run(db: sqlite3.Connection) -> None:
            # A PUT from the API carries no last-active time: keep the stored one, and
            # never move it backwards.
            db.execute(
                "INSERT INTO users (id, name, role, disabled, last_active_at)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, role = excluded.role,"
                " disabled = excluded.disabled, last_active_at = COALESCE("
                "   MAX(last_active_at, excluded.last_active_at),"
                "   last_active_at, excluded.last_active_at)",
                (user.id, user.name, user.role, int(user.disabled), user.last_active_at),
            )

        await self._run(run)

    async def get_user(self, user_id: str) -> User | None:
        """Every connect asks for its user. The lookups asked in one turn of the event loop
        go to the reading thread together: one hand-over for all of them, which cost more
        than the lookups themselves when many clients connect at once."""
        loop = asyncio.get_running_loop()
        if not self._user_reads:
            loop.call_soon(self._read_users)
        waiter: asyncio.Future[User | None] = loop.create_future()
        self._user_reads.setdefault(user_id, []).append(waiter)
        return await waiter

    def _read_users(self) -> None:
        asked, self._user_reads = self._user_reads, {}
        ids = list(asked)

        def run(db: sqlite3.Connection) -> dict[str, User]:
            found: dict[str, User] = {}
            for start in range(0, len(ids), _IDS_PER_QUERY):
                chunk = ids[start:start + _IDS_PER_QUERY]
                for user_id, name, role, disabled, last_active_at in db.execute(
                        "SELECT id, name, role, disabled, last_active_at FROM users"
                        f" WHERE id IN ({', '.join('?' * len(chunk))})", chunk):
                    found[user_id] = User(user_id, name, role, bool(disabled), last_active_at)
            return found

        def answer(done: asyncio.Future[dict[str, User]]) -> None:
            error = (StoreError(f"SQLite store {self.path}: the read was cancelled")
                     if done.cancelled() else done.exception())
            users = done.result() if error is None else {}
            for user_id, waiters in asked.items():
                for waiter in waiters:
                    if waiter.done():  # its caller went away
                        continue
                    if error is not None:
                        waiter.set_exception(error)
                    else:
                        waiter.set_result(users.get(user_id))

        asyncio.ensure_future(self._read(run)).add_done_callback(answer)

    async def delete_user(self, user_id: str) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                db.execute("DELETE FROM channel_members WHERE user_id = ?", (user_id,))
                return db.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount > 0

        return await self._run(run)

    async def set_last_active(self, times: dict[str, float]) -> None:
        if not times:
            return

        def run(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(
                    "UPDATE users SET last_active_at = ?1 WHERE id = ?2"
                    " AND (last_active_at IS NULL OR last_active_at < ?1)",
                    [(at, user_id) for user_id, at in times.items()],
                )

        await self._run(run)

    # channels ------------------------------------------------------------------------
    async def put_channel(self, channel_id: str, members: list[str]) -> None:
        def run(db: sqlite3.Connection) -> None:
            # Replace the member list but keep the rows (and read markers) of members
            # who stay.
            with _transaction(db):
                db.execute("INSERT OR IGNORE INTO channels (id) VALUES (?)", (channel_id,))
                keep = set(members)
                current = _members(db, channel_id)
                _remove_members(db, channel_id, [m for m in current if m not in keep])
                _add_members(db, channel_id, members)

        await self._run(run)

    async def update_channel_members(
        self, channel_id: str, add: list[str], remove: list[str]
    ) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                if not _channel_exists(db, channel_id):
                    return False
                _add_members(db, channel_id, add)
                _remove_members(db, channel_id, remove)
                return True

        return await self._run(run)

    async def get_channel_members(self, channel_id: str) -> list[str] | None:
        def run(db: sqlite3.Connection) -> list[str] | None:
            with _read_transaction(db):
                if not _channel_exists(db, channel_id):
                    return None
                return _members(db, channel_id)

        return await self._read(run)

    async def delete_channel(self, channel_id: str) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            # Members go with it (ON DELETE CASCADE).
            return db.execute("DELETE FROM channels WHERE id = ?", (channel_id,)).rowcount > 0

        return await self._run(run)

    async def channels_of_user(self, user_id: str) -> list[str]:
        def run(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT channel_id FROM channel_members WHERE user_id = ? ORDER BY channel_id",
                (user_id,),
            )
            return [channel_id for (channel_id,) in rows]

        return await self._read(run)

    async def set_channel_read(self, channel_id: str, user_id: str, at: float) -> None:
        def run(db: sqlite3.Connection) -> None:
            # The marker belongs to the membership: for a non-member this does nothing.
            db.execute(
                "UPDATE channel_members SET last_read_at = ? WHERE channel_id = ? AND user_id = ?",
                (at, channel_id, user_id),
            )

        await self._run(run)

    async def get_channel_read(self, channel_id: str, user_id: str) -> float | None:
        def run(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT last_read_at FROM channel_members WHERE channel_id = ? AND user_id = ?",
                (channel_id, user_id),
            ).fetchone()
            return None if row is None else row[0]

        return await self._read(run)

    # chats ---------------------------------------------------------------------------
    async def set_chat_read(self, chat_id: str, user_id: str, at: float,
                            keep: int | None = None) -> None:
        def run(db: sqlite3.Connection) -> None:
            with _transaction(db):
                updated = db.execute(
                    "UPDATE chat_reads SET at = ? WHERE chat_id = ? AND user_id = ?",
                    (at, chat_id, user_id),
                ).rowcount
                if updated:
                    return  # not one more marker: nothing to evict
                db.execute(
                    "INSERT INTO chat_reads (chat_id, user_id, at) VALUES (?, ?, ?)",
                    (chat_id, user_id, at),
                )
                if keep is None:
                    return
                (count,) = db.execute(
                    "SELECT COUNT(*) FROM chat_reads WHERE user_id = ?", (user_id,)
                ).fetchone()
                if count > keep:
                    # the oldest others (by time, ties by chat id); never the one just set
                    db.execute(
                        "DELETE FROM chat_reads WHERE user_id = ?1 AND chat_id IN ("
                        "  SELECT chat_id FROM chat_reads WHERE user_id = ?1 AND chat_id != ?2"
                        "  ORDER BY at, chat_id LIMIT ?3)",
                        (user_id, chat_id, count - keep),
                    )

        await self._run(run)

    async def get_chat_read(self, chat_id: str, user_id: str) -> float | None:
        def run(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT at FROM chat_reads WHERE chat_id = ? AND user_id = ?",
                (chat_id, user_id),
            ).fetchone()
            return None if row is None else row[0]

        return await self._read(run)

    async def put_chat_message(self, message: ChatMessage) -> None:
        m = message
        usage = None if m.usage is None else json.dumps(m.usage)

        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO chat_messages"
                " (chat_id, message_id, user_id, content, status, usage, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (m.chat_id, m.message_id, m.user_id, m.content, m.status, usage, m.updated_at),
            )

        await self._run(run)

    async def get_chat_message(self, chat_id: str, message_id: str) -> ChatMessage | None:
        def run(db: sqlite3.Connection) -> ChatMessage | None:
            row = db.execute(
                "SELECT user_id, content, status, usage, updated_at FROM chat_messages"
                " WHERE chat_id = ? AND message_id = ?",
                (chat_id, message_id),
            ).fetchone()
            if row is None:
                return None
            user_id, content, status, usage, updated_at = row
            usage = None if usage is None else json.loads(usage)
            return ChatMessage(chat_id, message_id, user_id, content, status, usage, updated_at)

        return await self._read(run)

    # notes ---------------------------------------------------------------------------
    async def put_note(self, note: Note) -> None:
        grants = [(note.id, "read", u) for u in note.read]
        grants += [(note.id, "write", u) for u in note.write]

        def run(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT INTO notes (id, owner) VALUES (?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET owner = excluded.owner",
                    (note.id, note.owner),
                )
                db.execute("DELETE FROM note_grants WHERE note_id = ?", (note.id,))
                db.executemany(
                    "INSERT INTO note_grants (note_id, access, user_id) VALUES (?, ?, ?)", grants
                )

        await self._run(run)

    async def get_note(self, note_id: str) -> Note | None:
        def run(db: sqlite3.Connection) -> Note | None:
            with _read_transaction(db):
                row = db.execute("SELECT owner FROM notes WHERE id = ?", (note_id,)).fetchone()
                if row is None:
                    return None
                grants: dict[str, set[str]] = {"read": set(), "write": set()}
                for access, user_id in db.execute(
                    "SELECT access, user_id FROM note_grants WHERE note_id = ?", (note_id,)
                ):
                    grants[access].add(user_id)
            return Note(note_id, row[0], frozenset(grants["read"]), frozenset(grants["write"]))

        return await self._read(run)

    async def delete_note(self, note_id: str) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM notes WHERE id = ?", (note_id,)).rowcount > 0

        return await self._run(run)

    # documents -----------------------------------------------------------------------
    async def append_update(self, document_id: str, update: bytes) -> int:
        def run(db: sqlite3.Connection) -> int:
            # Committed (and, with synchronous=FULL, fsynced) before the seq is returned.
            with _transaction(db):
                return _append(db, document_id, update)

        return await self._run(run)

    async def append_first_update(self, document_id: str, update: bytes) -> int | None:
        def run(db: sqlite3.Connection) -> int | None:
            # BEGIN IMMEDIATE holds the write lock from the check to the append: no other
            # connection, in this process or another, appends in between.
            with _transaction(db):
                row = db.execute(
                    "SELECT last_seq FROM documents WHERE id = ?", (document_id,)
                ).fetchone()
                if row is not None and row[0] > 0:
                    return None
                return _append(db, document_id, update)

        return await self._run(run)

    async def load_document(self, document_id: str) -> StoredDocument | None:
        def run(db: sqlite3.Connection) -> StoredDocument | None:
            with _read_transaction(db):
                row = db.execute(
                    "SELECT rowid, length(snapshot), content, updated_at, last_seq"
                    " FROM documents WHERE id = ?",
                    (document_id,),
                ).fetchone()
                if row is None:
                    return None
                rowid, size, content, updated_at, last_seq = row
                snapshot = None if size is None else _read_snapshot(db, rowid)
                updates = [
                    blob
                    for (blob,) in db.execute(
                        "SELECT blob FROM document_updates WHERE document_id = ? ORDER BY seq",
                        (document_id,),
                    )
                ]
            return StoredDocument(document_id, snapshot, updates, last_seq, content, updated_at)

        return await self._read(run)

    async def document_tail(self, document_id: str, after_seq: int) -> DocumentTail | None:
        def run(db: sqlite3.Connection) -> DocumentTail | None:
            with _read_transaction(db):
                row = db.execute(
                    "SELECT content, updated_at, last_seq, stored_bytes FROM documents"
                    " WHERE id = ?",
                    (document_id,),
                ).fetchone()
                if row is None:
                    return None
                content, updated_at, last_seq, stored_bytes = row
                first, count = db.execute(
                    "SELECT MIN(seq), COUNT(*) FROM document_updates WHERE document_id = ?",
                    (document_id,),
                ).fetchone()
                # the log holds every seq after `covered`; the snapshot the rest
                covered = last_seq if first is None else first - 1
                updates = None if after_seq < covered else [
                    blob
                    for (blob,) in db.execute(
                        "SELECT blob FROM document_updates WHERE document_id = ? AND seq > ?"
                        " ORDER BY seq",
                        (document_id, after_seq),
                    )
                ]
            return DocumentTail(document_id, updates, last_seq, content, updated_at,
                                stored_bytes, count)

        return await self._read(run)

    async def compact_document(self, document_id: str, upto_seq: int, snapshot: bytes) -> None:
        def run(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "DELETE FROM document_updates WHERE document_id = ? AND seq <= ?",
                    (document_id, upto_seq),
                )
                # A document deleted meanwhile stays deleted (UPDATE matches no row).
                db.execute(
                    "UPDATE documents SET snapshot = ?1, stored_bytes = length(?1) + ("
                    "   SELECT COALESCE(SUM(length(blob)), 0) FROM document_updates"
                    "   WHERE document_id = ?2)"
                    " WHERE id = ?2",
                    (snapshot, document_id),
                )

        await self._run(run)

    async def set_document_content(self, document_id: str, content: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO documents (id, content, updated_at) VALUES (?1, ?2, ?3)"
                " ON CONFLICT (id) DO UPDATE SET content = ?2, updated_at = ?3",
                (document_id, content, time.time()),
            )

        await self._run(run)

    async def delete_document(self, document_id: str) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            # Updates go with it (ON DELETE CASCADE).
            return db.execute("DELETE FROM documents WHERE id = ?", (document_id,)).rowcount > 0

        return await self._run(run)

    async def document_stats(self) -> tuple[int, int]:
        def run(db: sqlite3.Connection) -> tuple[int, int]:
            count, total = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0) FROM documents"
            ).fetchone()
            return count, total

        return await self._read(run)



def _read_snapshot(db: sqlite3.Connection, rowid: int) -> bytes:
    """A document's snapshot through SQLite's blob API, which copies it into the new bytes
    with the interpreter lock released: a 32 MB snapshot read as a column value holds the
    lock (and so the event loop) for the whole copy."""
    with db.blobopen("documents", "snapshot", rowid, readonly=True) as blob:
        return blob.read()


def _append(db: sqlite3.Connection, document_id: str, update: bytes) -> int:
    """Inside a write transaction: one more update in the log; returns its seq."""
    db.execute(
        "INSERT INTO documents (id, updated_at, last_seq, stored_bytes)"
        " VALUES (?1, ?2, 1, ?3)"
        " ON CONFLICT (id) DO UPDATE SET updated_at = ?2,"
        " last_seq = last_seq + 1, stored_bytes = stored_bytes + ?3",
        (document_id, time.time(), len(update)),
    )
    row = db.execute("SELECT last_seq FROM documents WHERE id = ?", (document_id,)).fetchone()
    seq = int(row[0])
    db.execute(
        "INSERT INTO document_updates (document_id, seq, blob) VALUES (?, ?, ?)",
        (document_id, seq, update),
    )
    return seq


def _channel_exists(db: sqlite3.Connection, channel_id: str) -> bool:
    return db.execute("SELECT 1 FROM channels WHERE id = ?", (channel_id,)).fetchone() is not None


def _members(db: sqlite3.Connection, channel_id: str) -> list[str]:
    rows = db.execute(
        "SELECT user_id FROM channel_members WHERE channel_id = ? ORDER BY user_id",
        (channel_id,),
    )
    return [user_id for (user_id,) in rows]


def _add_members(db: sqlite3.Connection, channel_id: str, users: list[str]) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO channel_members (channel_id, user_id) VALUES (?, ?)",
        [(channel_id, u) for u in users],
    )


def _remove_members(db: sqlite3.Connection, channel_id: str, users: list[str]) -> None:
    db.executemany(
        "DELETE FROM channel_members WHERE channel_id = ? AND user_id = ?",
        [(channel_id, u) for u in users],
    )


def _detail(exc: sqlite3.DatabaseError) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)
