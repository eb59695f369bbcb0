"""A document in memory: its pycrdt copy, what it was built from, and what a joiner gets.

A document stays loaded while anybody uses it, so a join costs what is new, not the whole
document:

- **Loading** (the first use, or after a failure) reads the stored snapshot and log and
  replays them. Above `OFF_LOOP_BYTES` the replay and the surrogate-pair scan run on a
  worker thread (pycrdt documents may be used from any thread; the document's lock keeps
  every use of it one at a time), the snapshot first, then each update in its own call, so
  the interpreter lock changes hands between calls and the event loop keeps serving others.
- **Catching up** (a shared store: several nodes append to one log) applies only the stored
  updates after `last_seq`; a log compacted past that point means a full load.
- **A joiner's state** is encoded once and kept until the next change, so joins of a
  document nobody is editing cost nothing; encoding a large document runs on the worker
  thread. (A joiner always gets one complete state: open-webui's editor decides from it
  whether the note is empty.)
"""
from __future__ import annotations

import asyncio
import logging

import pycrdt

from ..backends import Store
from .yjs import InvalidUpdate, decode_state_vector, inspect_update

log = logging.getLogger("rt.documents")

OFF_LOOP_BYTES = 256 * 1024  # replay / parse / encode work above this runs on a thread


class LoadedDocument:
    """One document in memory; every field is guarded by `lock` once loaded."""

    def __init__(self, document_id: str):
        self.id = document_id
        self.lock = asyncio.Lock()
        self.refs = 0  # operations and tasks using it: it stays in memory while > 0
        self.ydoc: pycrdt.Doc | None = None  # None = (re)load from the store at next use
        self.sv: dict[int, int] = {}
        self.pairs: dict[int, set[int]] = {}  # surrogate pairs of its strings (see UpdateShape)
        self.exists = False  # stored
        self.snapshot_bytes = 0
        self.log_count = 0  # stored updates since the snapshot
        self.log_bytes = 0
        self.last_seq = 0
        self.behind = False  # other nodes stored updates this copy lacks: catch up
        self.content: str | None = None  # stored rendered content, JSON text
        self.updated_at: float | None = None
        self.compacting = False
        self.state: bytes | None = None  # the encoded state a joiner gets, until a change

    def loaded(self) -> pycrdt.Doc:
        """The in-memory Yjs document: only under `lock`, after a load."""
        if self.ydoc is None:
            raise RuntimeError(f"document {self.id!r} is used before it is loaded")
        return self.ydoc

    @property
    def stored_bytes(self) -> int:
        return self.snapshot_bytes + self.log_bytes

    def drop(self) -> None:
        """Forget the in-memory copy: rebuilt from the store at next use."""
        self.ydoc = None
        self.state = None

    # ------------------------------------------------------------------ from the store
    async def load(self, store: Store) -> None:
        """Under lock: build the in-memory copy from the store."""
        stored = await store.load_document(self.id)
        self.state, self.behind = None, False
        if stored is None:
            self.ydoc, self.sv, self.pairs = pycrdt.Doc(), {}, {}
            self.exists, self.snapshot_bytes, self.log_count, self.log_bytes = False, 0, 0, 0
            self.last_seq, self.content, self.updated_at = 0, None, None
            return
        parts = ([stored.snapshot] if stored.snapshot else []) + list(stored.updates)
        if sum(len(part) for part in parts) > OFF_LOOP_BYTES:
            ydoc, pairs = await asyncio.to_thread(_build, self.id, parts)
        else:
            ydoc, pairs = _build(self.id, parts)
        self.ydoc, self.pairs = ydoc, pairs
        self.sv = decode_state_vector(ydoc.get_state())
        self.exists = True
        self.snapshot_bytes = len(stored.snapshot or b"")
        self.log_count = len(stored.updates)
        self.log_bytes = sum(len(u) for u in stored.updates)
        self.last_seq = stored.last_seq
        self.content = stored.content
        self.updated_at = stored.updated_at

    async def catch_up(self, store: Store) -> None:
        """Under lock: the in-memory copy gets what other nodes stored since it was current
        (a shared store); loads it whole when it is not in memory or the log was compacted
        past it."""
        if self.ydoc is None:
            await self.load(store)
            return
        stored = await store.load_document(self.id)
        if stored is None:
            if self.exists:  # deleted elsewhere
                await self.load(store)
            return
        first_seq = stored.last_seq - len(stored.updates) + 1
        if stored.last_seq < self.last_seq or self.last_seq < first_seq - 1:
            await self.load(store)  # compacted past this copy, or an older log
            return
        new = list(stored.updates[self.last_seq - first_seq + 1:])
        if new:
            ydoc = self.loaded()
            if sum(len(u) for u in new) > OFF_LOOP_BYTES:
                pairs = await asyncio.to_thread(_apply_all, ydoc, self.id, new)
            else:
                pairs = _apply_all(ydoc, self.id, new)
            for client, clocks in pairs.items():
                self.pairs.setdefault(client, set()).update(clocks)
            self.sv = decode_state_vector(ydoc.get_state())
            self.state = None
        self.exists = True
        self.last_seq = stored.last_seq
        self.snapshot_bytes = len(stored.snapshot or b"")
        self.log_count = len(stored.updates)
        self.log_bytes = sum(len(u) for u in stored.updates)
        self.content = stored.content
        self.updated_at = stored.updated_at
        self.behind = False

    # ------------------------------------------------------------------ to joiners
    def changed(self) -> None:
        """An update applied to the in-memory copy: the kept state is out of date."""
        self.state = None

    async def joiner_state(self) -> bytes:
        """Under lock: the whole document as one update, encoded once per change."""
        if self.state is None:
            self.state = await self.encode()
        return self.state

    async def encode(self) -> bytes:
        """Under lock: the whole document as one update."""
        ydoc = self.loaded()
        if self.stored_bytes > OFF_LOOP_BYTES:
            return await asyncio.to_thread(ydoc.get_update)
        return ydoc.get_update()


def _build(document_id: str, parts: list[bytes]) -> tuple[pycrdt.Doc, dict[int, set[int]]]:
    ydoc: pycrdt.Doc = pycrdt.Doc()
    return ydoc, _apply_all(ydoc, document_id, parts)


def _apply_all(ydoc: pycrdt.Doc, document_id: str,
               parts: list[bytes]) -> dict[int, set[int]]:
    """Apply stored parts one call each (an unreadable one is logged and skipped); returns
    the surrogate pairs of their strings."""
    pairs: dict[int, set[int]] = {}
    for index, part in enumerate(parts):
        try:
            ydoc.apply_update(part)
        except Exception:
            log.error("stored update #%d of %s is unreadable; skipped", index, document_id)
            continue
        try:
            for client, clocks in inspect_update(part).pairs.items():
                pairs.setdefault(client, set()).update(clocks)
        except InvalidUpdate:
            pass  # an empty snapshot; a log from before validation existed
    return pairs
