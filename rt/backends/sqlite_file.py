"""The SQLite file of the single-node store (sqlite_store.py): opening it (WAL, fsync on
every commit, the schema migrated), transactions, and the checks readiness relies on.
Everything here runs on the store's one worker thread."""
from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ..core.errors import StoreError

BUSY_TIMEOUT_MS = 5000

# Ordered schema migrations: MIGRATIONS[i] takes the schema from version i to i + 1
# (`PRAGMA user_version`). Append new ones; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id             TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        role           TEXT NOT NULL,
        disabled       INTEGER NOT NULL DEFAULT 0,
        last_active_at REAL
    );
    CREATE TABLE channels (id TEXT PRIMARY KEY);
    -- No foreign key to users: the backend may list members before registering them.
    CREATE TABLE channel_members (
        channel_id   TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
        user_id      TEXT NOT NULL,
        last_read_at REAL,
        PRIMARY KEY (channel_id, user_id)
    ) WITHOUT ROWID;
    -- channels_of_user and delete_user look members up by user.
    CREATE INDEX channel_members_by_user ON channel_members(user_id, channel_id);
    CREATE TABLE chat_reads (
        chat_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        at      REAL NOT NULL,
        PRIMARY KEY (chat_id, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE chat_messages (
        chat_id    TEXT NOT NULL,
        message_id TEXT NOT NULL,
        user_id    TEXT NOT NULL,
        content    TEXT NOT NULL,
        status     TEXT NOT NULL,
        usage      TEXT,  -- JSON
        updated_at REAL NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    ) WITHOUT ROWID;
    CREATE TABLE notes (
        id    TEXT PRIMARY KEY,
        owner TEXT NOT NULL
    );
    CREATE TABLE note_grants (
        note_id TEXT NOT NULL REFERENCES notes(id) ON DELETE CASCADE,
        access  TEXT NOT NULL CHECK (access IN ('read', 'write')),
        user_id TEXT NOT NULL,
        PRIMARY KEY (note_id, access, user_id)
    ) WITHOUT ROWID;
    -- stored_bytes = length(snapshot) + sum of length(blob) of the document's updates,
    -- kept up to date on every change so document_stats (scraped by /metrics) never has
    -- to read the whole update log.
    CREATE TABLE documents (
        id           TEXT PRIMARY KEY,
        snapshot     BLOB,
        content      TEXT,
        updated_at   REAL NOT NULL,
        last_seq     INTEGER NOT NULL DEFAULT 0,
        stored_bytes INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE document_updates (
        document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        blob        BLOB NOT NULL,
        PRIMARY KEY (document_id, seq)
    ) WITHOUT ROWID;
    """,
    # 2: chat read markers are bounded per user (set_chat_read(keep=)): counting a user's
    # markers and finding the oldest ones goes through this index, not the whole table.
    """
    CREATE INDEX chat_reads_by_user ON chat_reads(user_id, at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock up front, so a transaction never fails half-way with
    # SQLITE_BUSY when another process writes too (busy_timeout covers the wait instead).
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        # Some errors (e.g. SQLITE_FULL) already rolled back; a failed COMMIT may not have.
        # Either way no transaction may stay open, or every later BEGIN would fail.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


@contextmanager
def read(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction: several SELECTs see one snapshot even if another process
    writes between them."""
    db.execute("BEGIN")
    try:
        yield db
    finally:
        if db.in_transaction:
            db.execute("COMMIT")


def check_writable(db: sqlite3.Connection) -> None:
    """Commit a real write (the unchanged schema version). SQLite silently opens a
    write-protected file read-only, and a rolled-back write never leaves its page cache, so
    only a committed write shows that the next real commit would succeed."""
    db.execute("BEGIN IMMEDIATE")
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        db.execute(f"PRAGMA user_version = {int(version)}")
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")


def check_readable(db: sqlite3.Connection) -> None:
    """A read of the schema: the file answers, and the thread that ran this is alive. Writes
    nothing, so a readiness probe or a metrics scrape costs no fsync."""
    db.execute("SELECT count(*) FROM sqlite_master").fetchone()


# The errors of a write path that fails for a reason outside the statement (disk full,
# file or file system read-only, I/O error, a damaged or replaced file): the next write
# would fail too, so the store is not ready until one succeeds.
WRITE_PATH_ERRORS = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                     "SQLITE_CORRUPT", "SQLITE_NOTADB")


def write_path_failed(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", None) or ""
    return name.startswith(WRITE_PATH_ERRORS)


MIN_FREE_BYTES = 1 << 20


def check_disk(directory: str) -> None:
    """The file system itself: a rolled-back write stays in SQLite's page cache and would
    not notice a full or read-only disk, which the next real commit fails on."""
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        raise StoreError(f"data directory {directory}: {exc.strerror}") from exc
    if st.f_flag & os.ST_RDONLY:
        raise StoreError(f"data directory {directory} is on a read-only file system")
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        raise StoreError(f"data directory {directory} has less than 1 MiB free")


def connect(path: str) -> sqlite3.Connection:
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    # isolation_level=None: no implicit transactions; we open them explicitly.
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # FULL: in WAL mode every commit is fsynced, so an acked Yjs update is on disk.
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        with _one_process_at_a_time(path):
            # The switch to WAL takes the file for itself, and when several processes ask
            # at once (the workers of one box, starting on a new data directory) SQLite
            # refuses some of them at once, without the busy wait (it could deadlock):
            # 3 of 90 such opens failed with "database is locked" before this lock.
            (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode != "wal":
                raise StoreError(f"SQLite store {path}: cannot use WAL mode (got {mode!r})")
            _migrate(db, path)
        check_writable(db)
    except BaseException:
        db.close()
        raise
    return db


def connect_reader(path: str) -> sqlite3.Connection:
    """A second connection, for reads only, to a file `connect` has opened (and migrated)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA query_only = ON")
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def _one_process_at_a_time(path: str) -> Iterator[None]:
    """Held while a process prepares the file (`connect`): several processes open it at
    once (the workers of one box), and one switches it to WAL and migrates while the others
    wait here, then find it done."""
    with open(path + ".migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _migrate(db: sqlite3.Connection, path: str) -> None:
    # (under _one_process_at_a_time: each migration's own BEGIN IMMEDIATE comes after the
    # version was read, so it cannot be the guard)
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"SQLite store {path}: schema version {version} is newer than this build "
            f"supports ({SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        # executescript commits any open transaction first, so BEGIN/COMMIT go inside the
        # script: a migration and its version bump land together or not at all.
        try:
            db.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[target - 1]}; "
                f"PRAGMA user_version = {target}; COMMIT;"
            )
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
