"""Collaborative documents: Yjs updates validated, stored durably, relayed (protocol §3.1).

The CRDT engine is pycrdt (never y-py: it aborts the process on some malformed updates),
run in the document host process; this module decides, on the event loop, with what the
host answers.

An update from a client is accepted in four steps, under the document's lock so that the
in-memory document, the stored log and the order of relays always agree:

1. `inspect_update` (documents/yjs.py) reads it against the Yjs v1 update grammar in pure
   Python, with bounds: every count and length must fit in the bytes that follow, nesting
   of `Any` values is bounded (pycrdt overflows its stack on ~100,000 nested arrays: a
   segfault), only content kinds that npm `yjs` can read are allowed, and the bytes must be
   used up exactly (pycrdt ignores trailing garbage; so would the other clients). The one
   empty update `[0, 0]` is acknowledged and dropped (y-py sends it for transactions
   without changes); any other update without content is refused.
2. `missing_dependencies` checks that everything the update builds on (earlier clocks of
   its clients, origins, parents, deleted ranges) is in the document already or in the
   update itself: an update that would sit in Yjs's "pending" area is refused rather than
   stored, so that no client ever receives something it cannot integrate either. An
   update that would cut a character in two (between the halves of a UTF-16 surrogate
   pair) is refused too: Yrs mangles such text, where npm yjs writes U+FFFD.
3. pycrdt applies it to the loaded copy, in the document host (a process of its own:
   memory.py, host.py); the state vector afterwards must cover it. If pycrdt raises, or the
   update did not integrate, the copy is dropped and is rebuilt from the store at next use
   (the store never saw the update), so a refused update leaves no trace.
4. the store appends it (on disk before returning); only then is the sender acked and the
   update relayed to the document's room.

Past `[documents] compaction_threshold` stored updates, the log is merged into one snapshot
(`Store.compact_document`, atomic); a document stays stored when its editors leave and
across restarts, and leaves memory when nobody uses it.

open-webui 0.12's editor seeds an empty document with `initialize`: the first seed stored
wins (`Store.append_first_update`, atomic across nodes) and every seeder is answered with
the state that won, never with a `{ok}` it would try to apply as an update.

Two seams for other sources of truth: every access decision goes through `note_access`
(default: the note ACLs of the appliance's directory) and every rendered content stored
is also handed to `on_content` with the identity of its last editor.

Longer than most modules: joins, the four steps of an update, seeds, leaves, loading and
compaction all run under the one document lock and share its bookkeeping (state vector,
surrogate pairs, log counts); split apart, the lock discipline would be spread over
modules. The grammar reader is in yjs.py, the socket and HTTP edges beside it.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from .. import payloads as p
from .. import rooms
from ..auth import Identity
from ..backends import Store
from ..backends.memory import MemoryEditors
from ..core.errors import StoreError
from ..core.tasks import TaskGroup
from ..directory import note_document_id
from ..metrics import Figure
from ..rights import DirectoryRights
from .host_client import DocumentHost
from .memory import LoadedDocument
from .yjs import (
    EMPTY_UPDATE,
    InvalidUpdate,
    UpdateShape,
    inspect_update,
    integrated,
    missing_dependencies,
    splits_pair,
)

log = logging.getLogger("rt.documents")

NOTE = "note"
_MISSING = object()  # a payload field that was not sent (None is JSON null)

# (identity, note id) → "write", "read" or None (no access); may raise p.NotFound
NoteAccess = Callable[[Identity, str], Awaitable[str | None]]
# (document id, rendered content as JSON text, identity of its last editor)
ContentHook = Callable[[str, str, Identity], Awaitable[None]]


def bytes_of(value: Any, what: str, limit: int) -> bytes:
    """A binary payload field: bytes, or a list of ints 0..255 (what open-webui sends)."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) > limit:
            raise p.TooLarge(f"'{what}' is larger than {limit} bytes")
        return bytes(value)
    if isinstance(value, list):
        if len(value) > limit:
            raise p.TooLarge(f"'{what}' is larger than {limit} bytes")
        if any(type(item) is not int for item in value):
            raise p.BadRequest(f"'{what}' must be binary or a list of integers 0..255")
        try:
            return bytes(value)
        except ValueError:
            raise p.BadRequest(f"'{what}' must be binary or a list of integers 0..255") from None
    raise p.BadRequest(f"'{what}' must be binary or a list of integers 0..255")


def _content_text(content: Any, limit: int) -> str | None:
    """`data.content` as the JSON text that is stored; None when the payload had none."""
    if content is _MISSING:
        return None
    try:
        text = orjson.dumps(content).decode()
    except TypeError:  # binary or out-of-range numbers: not JSON
        raise p.BadRequest("'data.content' must be a JSON value") from None
    if len(text) > limit:
        raise p.TooLarge("'data.content' is larger than max_document_bytes")
    return text


# A writer whose updates are refused gets the state to resynchronise on, at most this
# often (then once more at the end of the interval): a client sending refused updates in
# a loop must not make the appliance send it the whole document for each of them.
RESYNC_INTERVAL = 1.0


# =========================================================================== service
@dataclass
class Editor:
    sid: str
    user_id: str
    user_name: str
    user_color: str | None
    identity: Identity  # access is re-checked with it when rights change
    level: str = "read"  # "write" or "read", decided at join, re-decided on an ACL change
    resynced_at: float = -RESYNC_INTERVAL  # when it was last sent the state after a refusal
    resync_due: bool = False  # one more is on its way (the refusals came faster)


def directory_note_access(store: Store) -> NoteAccess:
    """Note rights from the appliance's own directory (`rights.DirectoryRights`)."""
    rights = DirectoryRights(store)

    async def access(identity: Identity, note_id: str) -> str | None:
        return await rights.note_access(identity, None, note_id)

    return access


class CollabService:
    def __init__(self, emitter, store: Store, settings: Callable[[], Any], host: DocumentHost,
                 limits=None,
                 clock: Callable[[], float] = time.time, registry=None,
                 note_access: NoteAccess | None = None, on_content: ContentHook | None = None,
                 shared: bool = False):
        self.emitter = emitter
        self.host = host  # holds the pycrdt copies (a process of its own)
        # cluster-wide editors (the `sessions` of a state, leaves of sessions whose node
        # died); `editors` below is this node's own view, used for access decisions
        self.registry = registry if registry is not None else MemoryEditors()
        self.sio = emitter.sio
        self.store = store
        self.settings = settings  # → the [documents] section, read per use (reloadable)
        self.limits = limits
        self.clock = clock
        # the one place rights to a note are decided; the one place stored content goes
        self.note_access = note_access or directory_note_access(store)
        self.on_content = on_content
        # several nodes append to the store's log (Redis): a kept copy catches up before
        # it answers (joins, states, the HTTP API, updates that build on others')
        self.shared = shared
        self.docs: dict[str, LoadedDocument] = {}
        self.editors: dict[str, dict[str, Editor]] = {}  # document → sid → editor
        self.joined: dict[str, set[str]] = {}  # sid → documents (the per-sid index)
        self.pending_content: dict[str, str] = {}  # document → JSON text not yet stored
        self._content_editor: dict[str, Identity] = {}  # document → who sent that text
        self._content_timers: dict[str, asyncio.TimerHandle] = {}
        self.tasks = TaskGroup()  # compactions, debounced content writes
        self.counts: Counter[str] = Counter()  # accepted / refused updates, compactions

    # ------------------------------------------------------------------ access
    async def access(self, identity: Identity, document_id: str) -> str:
        """'write' or 'read' for this identity; raises when it has neither."""
        namespace, sep, key = document_id.partition(":")
        if not sep or not namespace or not key:
            raise p.BadRequest("'document_id' must look like <namespace>:<id>, e.g. note:<id>")
        if namespace not in self.settings().namespaces:
            raise p.Forbidden(f"unknown document namespace {namespace!r}")
        if namespace != NOTE:
            return "write"  # a namespace the operator opened without an ACL
        level = await self.note_access(identity, key)
        if level in ("write", "read"):
            return level
        raise p.Forbidden("no access to this document")

    async def _writer(self, sid: str, identity: Identity, document_id: str) -> None:
        """The sender joined the document and may write to it: the right decided at its
        join (re-decided whenever the note's rights change: recheck_access), so an update
        costs no question to the store or to open-webui."""
        if self._editor(sid, document_id).level != "write":
            raise p.Forbidden("read-only access to this document")

    def _editor(self, sid: str, document_id: str) -> Editor:
        """The sender's join, checked against its live rooms (revocation removes the room)."""
        editor = self.editors.get(document_id, {}).get(sid)
        if editor is not None and self.sio.manager.in_room(sid, rooms.document(document_id)):
            return editor
        if editor is not None:
            self._forget(sid, document_id)
        raise p.Forbidden("join the document first")

    def _connected(self, sid: str) -> bool:
        return self.sio.manager.is_connected(sid, "/")

    # ------------------------------------------------------------------ events
    async def join(self, sid: str, identity, document_id: str, color: str | None) -> dict:
        level = await self.access(identity, document_id)
        room = rooms.document(document_id)
        first = sid not in self.editors.get(document_id, {})
        if first and self.limits is not None:
            self.limits.check_documents(len(self.joined.get(sid, ())))
            self.limits.check_rooms(len(self.sio.rooms(sid)))
        async with self._use(document_id) as doc, doc.lock:
            await self._current(doc)
            if not self._connected(sid):
                return {"ok": False}
            # in the room before the state is taken: every later update reaches it
            await self.sio.enter_room(sid, room)
            editors = self.editors.setdefault(document_id, {})
            editors[sid] = Editor(sid, identity.id, identity.name, color, identity, level)
            self.joined.setdefault(sid, set()).add(document_id)
            await self.registry.add(document_id, sid, {
                "user_id": identity.id, "user_name": identity.name, "user_color": color})
            await self._send_state(sid, doc)
        if first:
            await self.emitter.to_room("ydoc:user:joined", {
                "document_id": document_id, "user_id": identity.id,
                "user_name": identity.name, "user_color": color}, room, skip_sid=sid)
        return {"ok": True}

    async def state(self, sid: str, identity, document_id: str) -> None:
        self._editor(sid, document_id)
        async with self._use(document_id) as doc, doc.lock:
            await self._current(doc)
            await self._send_state(sid, doc)

    async def _send_state(self, sid: str, doc: LoadedDocument) -> None:
        """The whole state, encoded once per change (memory.py). Binary: one attachment,
        which the open-webui editor reads as it reads a list."""
        state = await doc.joiner_state()
        # `content` lets open-webui's editor seed an empty document from the last rendered
        # content when its own copy of the note is older (0.12.4 sends it on join)
        await self.emitter.emit("ydoc:document:state", {
            "document_id": doc.id, "state": state,
            "sessions": await self.registry.sessions(doc.id),
            "content": self._latest_content(doc)}, sids=[sid])

    async def update(self, sid: str, identity: Identity, document_id: str, wire: Any,
                     content: Any = _MISSING) -> dict:
        """Accept an update (the four steps of the module's docstring). A writer's update
        that is refused (too large, invalid) leaves the sender's copy ahead of everybody
        else's, and open-webui's editor does not send it again: the sender also gets the
        document's state, on which the editor resynchronises."""
        try:
            return await self._update(sid, identity, document_id, wire, content)
        except (p.EventError, StoreError):  # refused, or not stored
            await self._resync(sid, document_id)
            raise

    async def _resync(self, sid: str, document_id: str) -> None:
        editor = self.editors.get(document_id, {}).get(sid)
        if editor is None or editor.level != "write":
            return  # not joined, or never allowed to write: nothing diverged
        wait = editor.resynced_at + RESYNC_INTERVAL - time.monotonic()
        if wait <= 0:
            await self._send_resync(editor, document_id)
        elif not editor.resync_due:
            editor.resync_due = True
            asyncio.get_running_loop().call_later(wait, lambda: self.tasks.spawn(
                f"resync {sid}", self._send_resync(editor, document_id)))

    async def _send_resync(self, editor: Editor, document_id: str) -> None:
        sid = editor.sid
        if self.editors.get(document_id, {}).get(sid) is not editor:
            return  # left meanwhile
        editor.resynced_at, editor.resync_due = time.monotonic(), False
        try:
            async with self._use(document_id) as doc, doc.lock:
                await self._current(doc)
                await self._send_state(sid, doc)
        except (StoreError, p.EventError) as exc:
            log.info("state for %s after a refused update not sent: %s", sid, exc)

    async def _update(self, sid: str, identity: Identity, document_id: str, wire: Any,
                      content: Any) -> dict:
        s = self.settings()
        update = bytes_of(wire, "update", s.max_update_bytes)
        await self._writer(sid, identity, document_id)
        text = _content_text(content, s.max_document_bytes)
        if update == EMPTY_UPDATE:  # changes nothing: neither stored nor relayed
            if text is not None:
                await self._set_content(document_id, text, identity)
            return {"ok": True}
        shape = self._inspect(update)
        async with self._use(document_id) as doc, doc.lock:
            await self._ready(doc)
            self._editor(sid, document_id)  # still joined after the waits
            if doc.stored_bytes + len(update) > s.max_document_bytes and doc.log_count:
                await self._compact(doc)  # merged, the log is often much smaller
            self._check_size(doc, update)
            if missing_dependencies(shape, doc.sv) is not None:
                # in cluster mode another node may have stored what this update builds on
                await self._current(doc)
            await self._apply(doc, update, shape)
            try:
                seq = await self.store.append_update(document_id, update)
            except BaseException:
                doc.drop()  # holds an update the store may not have: reload
                raise
            await self._accepted(sid, identity, doc, seq, update, wire)
        if text is not None:
            await self._set_content(document_id, text, identity)
        return {"ok": True}

    async def initialize(self, sid: str, identity: Identity, document_id: str, wire: Any,
                         content: Any = _MISSING) -> bytes | bytearray:
        """open-webui 0.12's seed of a document its editor found empty: the first write
        wins. Returns the stored state when the document has had updates (the seed is
        dropped: applying it too would duplicate the text), else stores the seed, relays
        it like an update and returns it. Refusals raise, as for updates."""
        s = self.settings()
        update = bytes_of(wire, "update", s.max_update_bytes)
        await self._writer(sid, identity, document_id)
        text = _content_text(content, s.max_document_bytes)
        shape = None if update == EMPTY_UPDATE else self._inspect(update)
        async with self._use(document_id) as doc, doc.lock:
            await self._current(doc)  # another node may have seeded it already
            self._editor(sid, document_id)
            if doc.last_seq or shape is None:
                return await doc.encode()
            self._check_size(doc, update)
            await self._apply(doc, update, shape)
            try:
                seq = await self.store.append_first_update(document_id, update)
            except BaseException:
                doc.drop()
                raise
            if seq is None:  # another node seeded it since the load: its seed won
                doc.drop()  # the copy holds our seed too: rebuilt from the store
                await self._current(doc)
                return await doc.encode()
            await self._accepted(sid, identity, doc, seq, update, wire)
        if text is not None:
            await self._set_content(document_id, text, identity)
        return update

    async def set_content(self, sid: str, identity: Identity, document_id: str,
                          content: Any) -> dict:
        """A rendered content without an update (open-webui 0.12 sends one after merging
        edits it received): stored like the content that comes with an update."""
        await self._writer(sid, identity, document_id)
        text = _content_text(content, self.settings().max_document_bytes)
        if text is None:
            raise p.BadRequest("'data.content' is required")
        await self._set_content(document_id, text, identity)
        return {"ok": True}

    def _inspect(self, update: bytes) -> UpdateShape:
        try:
            return inspect_update(update)
        except InvalidUpdate as exc:
            self.counts["refused"] += 1
            raise p.BadRequest(f"invalid update: {exc}") from None

    def _check_size(self, doc: LoadedDocument, update: bytes) -> None:
        if doc.stored_bytes + len(update) > self.settings().max_document_bytes:
            raise p.TooLarge("the document would be larger than max_document_bytes")

    async def _accepted(self, sid: str, identity: Identity, doc: LoadedDocument, seq: int,
                        update: bytes, wire: Any) -> None:
        """Under doc.lock, once the store has the update as `seq`: bookkeeping, the relay
        and, past the threshold, a compaction."""
        if seq != doc.last_seq + 1:
            # other nodes appended meanwhile: this copy catches up from its own last_seq
            # at next use (this update again among them: applying it twice changes nothing)
            doc.behind = True
        else:
            doc.last_seq = seq
            doc.log_count += 1
            doc.stored_bytes += len(update)
        doc.exists = True
        doc.updated_at = self.clock()
        self.counts["accepted"] += 1
        # relayed in the order accepted, before any later update or join; as binary (one
        # attachment, whatever form it came in: a list of ints costs every encoder a pass)
        await self.emitter.to_room("ydoc:document:update", {
            "document_id": doc.id, "user_id": identity.id, "update": update,
            "socket_id": sid}, rooms.document(doc.id), skip_sid=sid)
        if doc.log_count > self.settings().compaction_threshold and not doc.compacting:
            doc.compacting = True
            self.tasks.spawn(f"compact {doc.id}", self._compact_soon(doc.id))

    async def _apply(self, doc: LoadedDocument, update: bytes, shape: UpdateShape) -> None:
        why = missing_dependencies(shape, doc.sv)
        if why is None and splits_pair(shape, doc.pairs):
            why = "it cuts a character in two (a UTF-16 surrogate pair)"
        if why is not None:
            self.counts["refused"] += 1
            raise p.BadRequest(f"invalid update: {why}")
        sv = await doc.apply(update)
        if sv is None or not integrated(shape, sv):
            doc.drop()  # may hold part of the update: rebuilt from the store
            self.counts["refused"] += 1
            raise p.BadRequest("invalid update: it does not apply to the document")
        doc.sv = sv
        _add_pairs(doc.pairs, shape.pairs)

    async def leave(self, sid: str, identity, document_id: str) -> dict:
        await self.sio.leave_room(sid, rooms.document(document_id))
        await self._left(sid, document_id)
        return {"ok": True}

    async def awareness(self, sid: str, identity, document_id: str, wire: Any) -> None:
        bytes_of(wire, "update", self.settings().max_update_bytes)
        self._editor(sid, document_id)
        await self.emitter.to_room("ydoc:awareness:update", {
            "document_id": document_id, "user_id": identity.id, "update": wire},
            rooms.document(document_id), skip_sid=sid)

    async def disconnected(self, sid: str, identity) -> None:
        """A session ended: here, or on a node that died (then only the cluster-wide
        registry knows its documents)."""
        documents = set(self.joined.get(sid, ())) | set(await self.registry.documents_of(sid))
        for document_id in sorted(documents):
            await self._left(sid, document_id)
        self.joined.pop(sid, None)

    async def _left(self, sid: str, document_id: str) -> None:
        editor = self._forget(sid, document_id)
        shared = await self.registry.remove(document_id, sid)
        if editor is not None:
            shared = {"user_id": editor.user_id, "user_name": editor.user_name,
                      "user_color": editor.user_color}
        if shared is not None:
            await self.emitter.to_room("ydoc:user:left", {
                "document_id": document_id, **shared},
                rooms.document(document_id), skip_sid=sid)

    def _forget(self, sid: str, document_id: str) -> Editor | None:
        editors = self.editors.get(document_id)
        editor = editors.pop(sid, None) if editors is not None else None
        if editors is not None and not editors:
            del self.editors[document_id]
        docs = self.joined.get(sid)
        if docs is not None:
            docs.discard(document_id)
            if not docs:
                del self.joined[sid]
        self._maybe_evict(document_id)
        return editor

    # ------------------------------------------------------------------ rights changes
    async def recheck_access(self, document_id: str) -> None:
        """Rights to the document may have changed (an ACL edited, the note deleted): this
        node's editors who may no longer read it leave it. Whoever learns of a change
        calls this; the directory does through `note_changed`."""
        levels: dict[Identity, str | None] = {}  # one decision per user, not per tab
        for sid, editor in list(self.editors.get(document_id, {}).items()):
            if editor.identity not in levels:
                levels[editor.identity] = await self._level(editor.identity, document_id)
            level = levels[editor.identity]
            if level is None:
                await self.sio.leave_room(sid, rooms.document(document_id))
                await self._left(sid, document_id)
            else:
                editor.level = level

    async def recheck_all(self) -> None:
        """Every open document's editors re-decided (open-webui says nothing when a note's
        rights change: the app's re-verification loop calls this)."""
        for document_id in list(self.editors):
            await self.recheck_access(document_id)

    async def _level(self, identity: Identity, document_id: str) -> str | None:
        try:
            return await self.access(identity, document_id)
        except p.EventError:
            return None
        except StoreError as exc:
            # rights that cannot be confirmed are not kept: a wrong leave costs a re-join,
            # a wrong stay would leak what the user may no longer see
            log.warning("re-checking access to %s failed, the editor leaves: %s",
                        document_id, exc)
            return None

    async def note_changed(self, note_id: str, note) -> None:
        """The directory's hook: a note's ACL changed (`note`) or it was deleted (None)."""
        await self.recheck_access(note_document_id(note_id))

    # ------------------------------------------------------------------ HTTP API
    async def get_document(self, document_id: str) -> dict | None:
        async with self._use(document_id) as doc, doc.lock:
            await self._current(doc)  # every node answers with every acked update
            if not doc.exists:
                return None
            state = await doc.joiner_state()
            return {"document_id": document_id,
                    "state_b64": base64.b64encode(state).decode(),
                    "content": self._latest_content(doc),
                    "updated_at": doc.updated_at}

    async def delete_document(self, document_id: str) -> bool:
        async with self._use(document_id) as doc, doc.lock:
            self._drop_content(document_id)
            found = await self.store.delete_document(document_id)
            doc.drop()
            for sid in list(self.editors.get(document_id, {})):
                self._forget(sid, document_id)
            await self.sio.close_room(rooms.document(document_id))
        return found

    def figures(self) -> Iterator[Figure]:
        yield Figure("rt_documents_open", "Yjs documents in memory on this node", len(self.docs))
        yield Figure("rt_document_updates", "Yjs updates by outcome (accepted, refused, ...)",
                     dict(self.counts), label="result", counter=True)

    def open_count(self) -> int:
        return len(self.docs)

    # ------------------------------------------------------------------ loading, memory
    @contextlib.asynccontextmanager
    async def _use(self, document_id: str) -> AsyncIterator[LoadedDocument]:
        doc = self.docs.get(document_id)
        if doc is None:
            doc = self.docs[document_id] = LoadedDocument(document_id, self.host)
        doc.refs += 1
        try:
            yield doc
        finally:
            doc.refs -= 1
            self._maybe_evict(document_id)

    def _maybe_evict(self, document_id: str) -> None:
        doc = self.docs.get(document_id)
        if doc is not None and doc.refs == 0 and document_id not in self.editors:
            del self.docs[document_id]  # stored: loaded again at next use
            doc.forget()

    async def _ready(self, doc: LoadedDocument) -> None:
        """Under doc.lock: loaded (from memory when it is kept)."""
        if not doc.loaded:
            await doc.load(self.store)
        elif doc.behind:
            await doc.catch_up(self.store)

    async def _current(self, doc: LoadedDocument) -> None:
        """Under doc.lock: loaded, with every update any node stored."""
        if self.shared:
            await doc.catch_up(self.store)
        else:
            await self._ready(doc)

    async def _compact_soon(self, document_id: str) -> None:
        async with self._use(document_id) as doc, doc.lock:
            try:
                await self._ready(doc)
                if doc.log_count > self.settings().compaction_threshold:
                    await self._compact(doc)
            finally:
                doc.compacting = False

    async def _compact(self, doc: LoadedDocument) -> None:
        """Under doc.lock: the whole stored log so far becomes one snapshot. Read fresh from
        the store first, so that the snapshot holds every update up to `last_seq` even when
        other nodes appended some; the store keeps those appended after it."""
        await self._current(doc)
        snapshot = bytes(await doc.joiner_state())
        await self.store.compact_document(doc.id, doc.last_seq, snapshot)
        doc.stored_bytes, doc.log_count = len(snapshot), 0
        self.counts["compactions"] += 1
        log.debug("compacted %s into %d bytes", doc.id, len(snapshot))

    # ------------------------------------------------------------------ rendered content
    def _latest_content(self, doc: LoadedDocument) -> Any:
        """The rendered content last sent (stored or still debounced), None when none."""
        text = self.pending_content.get(doc.id, doc.content)
        return orjson.loads(text) if text is not None else None

    async def _set_content(self, document_id: str, text: str, editor: Identity) -> None:
        delay = self.settings().content_debounce
        if delay <= 0:
            self._drop_content(document_id)
            await self._store_content(document_id, text, editor)
            return
        self.pending_content[document_id] = text
        self._content_editor[document_id] = editor
        if document_id not in self._content_timers:  # at most one write per delay
            loop = asyncio.get_running_loop()
            self._content_timers[document_id] = loop.call_later(
                delay, lambda: self.tasks.spawn(f"content {document_id}",
                                                self._flush_content(document_id)))

    def _drop_content(self, document_id: str) -> None:
        self.pending_content.pop(document_id, None)
        self._content_editor.pop(document_id, None)
        timer = self._content_timers.pop(document_id, None)
        if timer is not None:
            timer.cancel()

    async def _flush_content(self, document_id: str) -> None:
        self._content_timers.pop(document_id, None)
        text = self.pending_content.get(document_id)
        editor = self._content_editor.get(document_id)
        if text is None or editor is None:
            return
        try:
            await self._store_content(document_id, text, editor)
        finally:
            # pending until written (a read of the store after that finds it), unless a
            # newer content came meanwhile: that one has its own timer
            if self.pending_content.get(document_id) is text:
                del self.pending_content[document_id]
                self._content_editor.pop(document_id, None)

    async def _store_content(self, document_id: str, text: str, editor: Identity) -> None:
        try:
            await self.store.set_document_content(document_id, text)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("storing the rendered content of %s failed", document_id)
        else:
            doc = self.docs.get(document_id)
            if doc is not None and doc.loaded:
                doc.content, doc.updated_at, doc.exists = text, self.clock(), True
        if self.on_content is None:
            return
        # told even when the store failed: the hook's destination is a copy of its own
        try:
            await self.on_content(document_id, text, editor)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the content hook failed for %s", document_id)

    async def flush(self) -> None:
        """Store every debounced content now (graceful stop)."""
        for document_id in list(self.pending_content):
            timer = self._content_timers.pop(document_id, None)
            if timer is not None:
                timer.cancel()
            await self._flush_content(document_id)

    # ------------------------------------------------------------------ lifetime
    async def close(self) -> None:
        """Finish background work and store pending content (before the store closes)."""
        await self.tasks.settle(timeout=5)
        await self.flush()



def _add_pairs(into: dict[int, set[int]], pairs: dict[int, set[int]]) -> None:
    for client, clocks in pairs.items():
        into.setdefault(client, set()).update(clocks)
