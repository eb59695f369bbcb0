"""A loaded document: where its copy lives, what it was built from, what a joiner gets.

The pycrdt copy lives in the document host (host.py, a process of its own: pycrdt holds
the interpreter lock for a whole call, 180 ms for a 32 MB state); this object keeps what
the appliance decides with (state vector, surrogate pairs, stored counts) and the state a
joiner gets. A document stays loaded while anybody uses it, so a join costs what is new,
not the whole document:

- **Loading** (the first use, after a failure, or after the host was restarted) reads the
  stored snapshot and log and has the host replay them.
- **Catching up** (a shared store: several nodes append to one log) reads and has the
  host apply only the stored updates after `last_seq` (`Store.document_tail`); a log
  compacted past that point means a full load.
- **A joiner's state** is encoded once and kept until the next change, so joins of a
  document nobody is editing cost nothing; right after a load of a compacted document it
  is the stored snapshot itself. (A joiner always gets one complete state: open-webui's
  editor decides from it whether the note is empty.)
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..backends import Store
from .host_client import DocumentHost, HostError

log = logging.getLogger("rt.documents")


class LoadedDocument:
    """One document in memory; every field is guarded by `lock` once loaded."""

    def __init__(self, document_id: str, host: DocumentHost):
        self.id = document_id
        self.host = host
        self.lock = asyncio.Lock()
        self.refs = 0  # operations and tasks using it: it stays in memory while > 0
        self.generation: int | None = None  # the host process holding the copy; None: none
        self.sv: dict[int, int] = {}
        self.pairs: dict[int, set[int]] = {}  # surrogate pairs of its strings (see UpdateShape)
        self.exists = False  # stored
        self.stored_bytes = 0  # the stored snapshot's and log's bytes
        self.log_count = 0  # stored updates since the snapshot
        self.last_seq = 0
        self.behind = False  # other nodes stored updates this copy lacks: catch up
        self.content: str | None = None  # stored rendered content, JSON text
        self.updated_at: float | None = None
        self.compacting = False
        # the encoded state a joiner gets, until a change (as the host sent it: a bytearray)
        self.state: bytes | bytearray | None = None

    @property
    def loaded(self) -> bool:
        """The host holds a current copy (a restarted host holds none; a host that is not
        running yet is the next one)."""
        return self.host.running and self.generation == self.host.generation

    def drop(self) -> None:
        """Forget the copy: rebuilt from the store at next use (the host's is replaced
        then, or forgotten when the document leaves memory)."""
        self.generation = None
        self.state = None

    def forget(self) -> None:
        """The document leaves memory: the host forgets its copy (asked now, so before any
        later load of the same document)."""
        if self.loaded:
            self.host.tell("forget", self.id)
        self.drop()

    async def apply(self, update: bytes) -> dict[int, int] | None:
        """Under lock: the host applies a checked update; the state vector after it, or None
        when pycrdt refused it (the copy is dropped: it may hold part of the update)."""
        try:
            answer, _ = await self.host.call("apply", self.id, [update])
        except HostError:
            self.drop()
            raise
        if not answer["ok"]:
            self.drop()
            return None
        self.changed()
        return state_vector(answer)

    # ------------------------------------------------------------------ from the store
    async def load(self, store: Store) -> None:
        """Under lock: build the in-memory copy from the store."""
        stored = await store.load_document(self.id)
        self.state, self.behind = None, False
        if stored is None:
            await self.host.call("load", self.id)
            self.generation, self.sv, self.pairs = self.host.generation, {}, {}
            self.exists, self.stored_bytes, self.log_count = False, 0, 0
            self.last_seq, self.content, self.updated_at = 0, None, None
            return
        parts = ([stored.snapshot] if stored.snapshot else []) + list(stored.updates)
        # a compacted document's snapshot is its state as pycrdt encodes it: no encode
        answer, _ = await self.host.call("load", self.id, parts)
        self.generation = self.host.generation
        self.pairs, self.sv = _pairs(answer), state_vector(answer)
        if stored.snapshot and not stored.updates and not answer["skipped"]:
            self.state = stored.snapshot
        self.exists = True
        self.stored_bytes = len(stored.snapshot or b"") + sum(len(u) for u in stored.updates)
        self.log_count = len(stored.updates)
        self.last_seq = stored.last_seq
        self.content = stored.content
        self.updated_at = stored.updated_at

    async def catch_up(self, store: Store) -> None:
        """Under lock: the loaded copy gets what other nodes stored since it was current
        (a shared store), reading only that; loads it whole when it is not loaded or the
        log was compacted past it."""
        if not self.loaded:
            await self.load(store)
            return
        tail = await store.document_tail(self.id, self.last_seq)
        if tail is None:
            if self.exists:  # deleted elsewhere
                await self.load(store)
            return
        if tail.updates is None or tail.last_seq < self.last_seq:
            await self.load(store)  # compacted past this copy, or an older log
            return
        if tail.updates:
            answer, _ = await self.host.call("catch_up", self.id, tail.updates)
            for client, clocks in _pairs(answer).items():
                self.pairs.setdefault(client, set()).update(clocks)
            self.sv = state_vector(answer)
            self.state = None
        self.exists = True
        self.stored_bytes, self.log_count = tail.stored_bytes, tail.log_count
        self.last_seq = tail.last_seq
        self.content = tail.content
        self.updated_at = tail.updated_at
        self.behind = False

    # ------------------------------------------------------------------ to joiners
    def changed(self) -> None:
        """An update applied to the in-memory copy: the kept state is out of date."""
        self.state = None

    async def joiner_state(self) -> bytes | bytearray:
        """Under lock: the whole document as one update, encoded once per change."""
        if self.state is None:
            self.state = await self.encode()
        return self.state

    async def encode(self) -> bytes | bytearray:
        """Under lock: the whole document as one update."""
        _, state = await self.host.call("encode", self.id)
        return state[0]


def _pairs(answer: dict[str, Any]) -> dict[int, set[int]]:
    return {int(client): set(clocks) for client, clocks in answer["pairs"].items()}


def state_vector(answer: dict[str, Any]) -> dict[int, int]:
    """The state vector in a host's answer."""
    return {int(client): clock for client, clock in answer["sv"].items()}
