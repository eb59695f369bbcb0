"""Collaborative documents (protocol §3 ydoc:*, §3.1, §4, §5.3 documents) on a real
in-process appliance with real python-socketio clients.

The clients keep their own replica of the document in two independent Yjs implementations
(pycrdt and y-py), so convergence is checked across implementations, not against the
server's own engine only. Node + npm yjs clients are in test_documents_node.py; SIGKILL,
restarts of a child process and the property-based hostile-update test in
test_documents_process.py.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pycrdt
import pytest

from tests.support.appliance import WAIT, running
from tests.support.yjs_wire import var

try:  # an independent Yjs implementation; wheels only up to Python 3.12
    import y_py
except ImportError:  # pragma: no cover - depends on the interpreter
    y_py = None

pytestmark = pytest.mark.asyncio

DOC = "note:n1"
# many events per second: the tests stream updates faster than a person types
FAST = "[limits]\nevents_per_second = 100000\nevents_burst = 100000\n"
HALF_APPLYING_HOST = Path(__file__).parent.parent / "support" / "half_applying_host.py"


# ---------------------------------------------------------------------- harness
@contextlib.asynccontextmanager
async def documents(tmp_path, ini: str = ""):
    """An in-process appliance with the document service attached."""
    async with running(tmp_path, FAST + ini) as h:
        h.collab = h.app.documents
        assert h.collab is h.app.documents
        yield h


async def setup_note(h, owner="a", read=(), write=(), note="n1"):
    status, body = await h.api("PUT", f"/api/v1/notes/{note}",
                               {"owner": owner, "read": list(read), "write": list(write)})
    assert status == 200, body


async def two_writers(h) -> tuple[Editor, Editor]:
    """Users a and b, both writers of note n1 (a owns it), each joined with a replica."""
    await setup_note(h, owner="a", write=["b"])
    a = Editor(await h.connect(await h.user("a")), PyReplica())
    b = Editor(await h.connect(await h.user("b")), PyReplica())
    await a.join()
    await b.join()
    return a, b


async def eventually(pred: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or pred}")
        await asyncio.sleep(0.01)


class PyReplica:
    """A client's copy of the document: pycrdt or y-py, text root 't'."""

    def __init__(self, impl: str = "pycrdt"):
        self.impl = impl
        if impl == "ypy":
            self.doc = y_py.YDoc()
            self.text = self.doc.get_text("t")
        else:
            # 32-bit client ids, as npm yjs makes them: pycrdt's own are 53-bit, which
            # y-py 0.6.2 truncates to 32 bits when it encodes a reference to them
            self.doc = pycrdt.Doc(client_id=random.getrandbits(32))
            self.text = self.doc.get("t", type=pycrdt.Text)

    def insert(self, index: int, chunk: str) -> bytes:
        """Edit locally; returns the update it made."""
        if self.impl == "ypy":
            before = y_py.encode_state_vector(self.doc)
            with self.doc.begin_transaction() as txn:
                self.text.insert(txn, index, chunk)
            return bytes(y_py.encode_state_as_update(self.doc, before))
        before = self.doc.get_state()
        self.text.insert(index, chunk)
        return self.doc.get_update(before)

    def delete(self, index: int, length: int) -> bytes:
        if self.impl == "ypy":
            before = y_py.encode_state_vector(self.doc)
            with self.doc.begin_transaction() as txn:
                self.text.delete_range(txn, index, length)
            return bytes(y_py.encode_state_as_update(self.doc, before))
        before = self.doc.get_state()
        del self.text[index:index + length]
        return self.doc.get_update(before)

    def apply(self, update: Any) -> None:
        data = bytes(update)
        if self.impl == "ypy":
            y_py.apply_update(self.doc, data)
        else:
            self.doc.apply_update(data)

    def value(self) -> str:
        return str(self.text)


class Editor:
    """A python-socketio client editing one document through its replica."""

    def __init__(self, client, replica: PyReplica, document_id: str = DOC):
        self.client = client
        self.replica = replica
        self.document_id = document_id
        self.seen = 0

    async def join(self, **extra: Any) -> dict:
        ack = await self.client.call("ydoc:document:join",
                                     {"document_id": self.document_id, **extra}, timeout=WAIT)
        assert ack == {"ok": True}, ack
        await self.client.rec.wait_for("ydoc:document:state")
        self.pull()
        return ack

    def pull(self) -> str:
        """Apply every state / update received so far, in order."""
        events = self.client.rec.events
        for event, args in events[self.seen:]:
            data = args[0] if args else None
            if not isinstance(data, dict) or data.get("document_id") != self.document_id:
                continue
            if event == "ydoc:document:state":
                self.replica.apply(data["state"])
            elif event == "ydoc:document:update":
                self.replica.apply(data["update"])
        self.seen = len(events)
        return self.replica.value()

    async def send(self, update: bytes, as_list: bool = False, **extra: Any) -> Any:
        return await self.client.call("ydoc:document:update", {
            "document_id": self.document_id, "update": list(update) if as_list else update,
            **extra}, timeout=WAIT)

    async def type(self, index: int, chunk: str, **extra: Any) -> Any:
        ack = await self.send(self.replica.insert(index, chunk), **extra)
        assert ack == {"ok": True}, ack
        return ack


async def stored(h, document_id: str = DOC):
    return await h.app.backend.store.load_document(document_id)


def state_text(update: bytes) -> str:
    doc = pycrdt.Doc()
    doc.apply_update(update)
    return str(doc.get("t", type=pycrdt.Text))


async def api_text(h, document_id: str = DOC) -> str:
    status, body = await h.api("GET", f"/api/v1/documents/{document_id}")
    assert status == 200, body
    return state_text(base64.b64decode(body["state_b64"]))


# ---------------------------------------------------------------------- join and relay
async def test_join_sends_state_sessions_and_identity_not_payload(tmp_path):
    async with documents(tmp_path) as h:
        tok_a, tok_b = await h.user("a", "Ann"), await h.user("b", "Bob")
        await setup_note(h, owner="a", write=["b"])
        a, b = await h.connect(tok_a), await h.connect(tok_b)
        assert await a.call("ydoc:document:join", {
            "document_id": DOC, "user_id": "b", "user_name": "Mallory", "user_color": "#123456"},
            timeout=WAIT) == {"ok": True}
        state = await a.rec.wait_for("ydoc:document:state")
        assert state == {"document_id": DOC, "state": b"\x00\x00", "sessions": [a.get_sid()],
                         "content": None}
        await b.call("ydoc:document:join", {"document_id": DOC, "user_id": "a",
                                            "user_name": "Ann", "user_color": 42}, timeout=WAIT)
        state_b = await b.rec.wait_for("ydoc:document:state")
        assert sorted(state_b["sessions"]) == sorted([a.get_sid(), b.get_sid()])
        # forged id and name ignored; a color that is not a short string dropped
        assert await a.rec.wait_for("ydoc:user:joined") == {
            "document_id": DOC, "user_id": "b", "user_name": "Bob", "user_color": None}
        await asyncio.sleep(0.1)
        assert b.rec.of("ydoc:user:joined") == []  # never to the joiner itself
        # joining again re-sends the state, announces nobody twice
        again = await b.call("ydoc:document:join", {"document_id": DOC}, timeout=WAIT)
        assert again == {"ok": True}
        await eventually(lambda: len(b.rec.of("ydoc:document:state")) == 2)
        await asyncio.sleep(0.1)
        assert len(a.rec.of("ydoc:user:joined")) == 1
        # ydoc:document:state re-sends the state on request
        await a.emit("ydoc:document:state", {"document_id": DOC})
        await eventually(lambda: len(a.rec.of("ydoc:document:state")) == 2)


async def test_two_python_clients_converge_and_late_joiner_gets_everything(tmp_path):
    async with documents(tmp_path) as h:
        tok_a, tok_b, tok_c = [await h.user(u) for u in ("a", "b", "c")]
        await setup_note(h, owner="a", write=["b"], read=["c"])
        impl_b = "ypy" if y_py is not None else "pycrdt"
        a = Editor(await h.connect(tok_a), PyReplica("pycrdt"))
        b = Editor(await h.connect(tok_b), PyReplica(impl_b))
        await a.join()
        await b.join()
        await a.type(0, "hello")
        relayed = await b.client.rec.wait_for("ydoc:document:update")
        # the relay names the sender from its identity and its real sid; the update goes
        # out as binary (one attachment), whatever form it came in
        assert relayed["user_id"] == "a" and relayed["socket_id"] == a.client.get_sid()
        assert isinstance(relayed["update"], bytes)
        assert b.pull() == "hello"
        # concurrent edits from both, one of them sent as a list of ints (open-webui)
        await asyncio.gather(a.type(5, " world"), b.type(0, ">> ", as_list=False))
        ack = await b.send(b.replica.insert(0, "#"), as_list=True)
        assert ack == {"ok": True}
        # the one b sent as a list reaches a as binary too
        from_list = await a.client.rec.wait_for(
            "ydoc:document:update", lambda d: d["user_id"] == "b" and b"#" in d["update"])
        assert isinstance(from_list["update"], bytes)
        await eventually(lambda: a.pull() == b.pull() and len(a.pull()) == len("#>> hello world"))
        text = a.pull()
        assert sorted(text) == sorted("#>> hello world")
        await asyncio.sleep(0.1)
        # the sender never gets its own update back
        own = a.client.get_sid()
        assert all(u["socket_id"] != own for u in a.client.rec.of("ydoc:document:update"))
        # a late joiner (read access) receives the full merged state
        c = Editor(await h.connect(tok_c), PyReplica("pycrdt"))
        await c.join()
        assert c.pull() == text
        assert await api_text(h) == text


async def test_access_from_the_note_acl(tmp_path):
    async with documents(tmp_path, "[documents]\nnamespaces = note, scratch\n") as h:
        toks = {u: await h.user(u) for u in ("owner", "writer", "reader", "stranger")}
        toks["root"] = await h.user("root", role="admin")
        await setup_note(h, owner="owner", write=["writer"], read=["reader"])
        clients = {u: await h.connect(t) for u, t in toks.items()}
        join = {"document_id": DOC}
        for user in ("owner", "writer", "reader", "root"):
            ack = await clients[user].call("ydoc:document:join", join, timeout=WAIT)
            assert ack == {"ok": True}, user
        ack = await clients["stranger"].call("ydoc:document:join", join, timeout=WAIT)
        assert ack["error"] == "forbidden"
        assert "doc_note:n1" not in h.app.sio.rooms(clients["stranger"].get_sid())

        for user in ("owner", "writer", "root"):
            replica = PyReplica()
            ack = await Editor(clients[user], replica).send(replica.insert(0, user))
            assert ack == {"ok": True}, (user, ack)
        replica = PyReplica()
        ack = await Editor(clients["reader"], replica).send(replica.insert(0, "nope"))
        assert ack["error"] == "forbidden"
        assert "nope" not in await api_text(h)
        # a writer must join before writing, asking for the state or sending awareness
        other = await h.connect(toks["writer"])
        replica = PyReplica()
        assert (await Editor(other, replica).send(replica.insert(0, "x")))["error"] == "forbidden"
        for event in ("ydoc:document:state", "ydoc:awareness:update"):
            ack = await other.call(event, {"document_id": DOC, "update": [1]}, timeout=WAIT)
            assert ack["error"] == "forbidden", event

        c = clients["owner"]
        for document_id, code in (("note:missing", "not_found"), ("sheet:n1", "forbidden"),
                                  ("n1", "bad_request"), ("note:", "bad_request"),
                                  ("x" * 300, "bad_request"), (7, "bad_request")):
            ack = await c.call("ydoc:document:join", {"document_id": document_id}, timeout=WAIT)
            assert ack["error"] == code, (document_id, ack)
        ack = await c.call("ydoc:document:join", "note:n1", timeout=WAIT)
        assert ack["error"] == "bad_request"
        # a namespace the operator opened without an ACL: any user may edit
        assert await clients["stranger"].call(
            "ydoc:document:join", {"document_id": "scratch:pad"}, timeout=WAIT) == {"ok": True}


async def test_invalid_updates_are_refused_stored_nowhere_relayed_to_nobody(tmp_path):
    async with documents(tmp_path) as h:
        tok_a, tok_b = await h.user("a"), await h.user("b")
        await setup_note(h, owner="a", write=["b"])
        a = Editor(await h.connect(tok_a), PyReplica())
        b = Editor(await h.connect(tok_b), PyReplica())
        await a.join()
        await b.join()
        await a.type(0, "good 😀 text")
        await eventually(lambda: b.pull() == "good 😀 text")
        log_before = (await stored(h)).updates

        # what a well-behaved Yjs client would send next, then spoiled in various ways
        valid = PyReplica()
        valid.apply(a.replica.doc.get_update())
        later = valid.insert(4, "!")
        orphan = PyReplica().insert(0, "x")  # fine on its own
        orphan_next = PyReplica()
        orphan_next.apply(orphan)
        depends = orphan_next.insert(1, "y")  # needs `orphan`, which the server never saw
        # a Yjs client deleting half of the emoji (UTF-16 code unit 6 of "good 😀 text"):
        # Yrs would mangle the document, npm yjs would read a different text
        client_id = a.replica.doc.client_id
        half_emoji = bytes([0, 1]) + var(client_id) + bytes([1, 6, 1])
        deep = _deep_any(client_id=99, depth=200_000)  # segfaults pycrdt unchecked
        bad = {
            "garbage": b"\x07\x00\xffgarbage",
            "empty bytes": b"",
            "empty update with more": b"\x00\x00\x00",
            "truncated": later[:-3],
            "trailing bytes": later + b"\x00",
            "huge counts": b"\xff\xff\xff\xff\x0f",
            "missing dependency": depends,
            "half a surrogate pair": half_emoji,
            "nested 200000 deep": deep,
            "ints above 255": [1, 1, 300],
            "booleans": [True, False],
            "floats": [1.0, 0.0],
            "a string": "AQE=",
            "an object": {"0": 1},
            "null": None,
        }
        for name, update in bad.items():
            ack = await a.client.call("ydoc:document:update",
                                      {"document_id": DOC, "update": update}, timeout=WAIT)
            assert ack.get("error") == "bad_request", (name, ack)
        ack = await a.client.call("ydoc:document:update", {"document_id": DOC}, timeout=WAIT)
        assert ack["error"] == "bad_request"
        ack = await a.client.call("ydoc:document:update", {
            "document_id": DOC, "update": later, "data": {"content": b"binary"}}, timeout=WAIT)
        assert ack["error"] == "bad_request"
        # the empty update (y-py sends it for transactions that change nothing) is fine,
        # and dropped
        assert await a.send(b"\x00\x00") == {"ok": True}
        ack = await a.client.call("ydoc:document:update", {"document_id": DOC, "update": later,
                                                           "data": "not an object"}, timeout=WAIT)
        assert ack["error"] == "bad_request"
        await asyncio.sleep(0.2)
        assert b.pull() == "good 😀 text"  # nothing relayed
        assert (await stored(h)).updates == log_before  # nothing stored
        assert h.collab.counts["refused"] >= 9
        # the document works on: a valid update, a new joiner, the API
        assert await a.send(later) == {"ok": True}
        await eventually(lambda: b.pull() == "good! 😀 text")
        c = Editor(await h.connect(await h.user("c")), PyReplica("ypy" if y_py else "pycrdt"))
        await setup_note(h, owner="a", write=["b", "c"])
        await c.join()
        assert c.pull() == "good! 😀 text"
        assert await api_text(h) == "good! 😀 text"


async def restart_host_with(h, command: list[str]) -> None:
    """The document host ends (killed, as a crash would) and the next one runs `command`."""
    host = h.collab.host
    host.command = command
    await host.start()
    os.kill(host.pid, signal.SIGKILL)
    await eventually(lambda: not host.running, what="the killed host noticed")


async def test_a_failure_inside_pycrdt_leaves_no_trace(tmp_path):
    """If pycrdt raises (or does not integrate the update) after changing the document,
    the loaded copy is rebuilt from the store, which never saw the update."""
    async with documents(tmp_path) as h:
        tok_a, tok_b = await h.user("a"), await h.user("b")
        await setup_note(h, owner="a", write=["b"])
        a = Editor(await h.connect(tok_a), PyReplica())
        await a.join()
        await a.type(0, "kept")
        sneaky = PyReplica()
        sneaky.apply(a.replica.doc.get_update())
        sneaky_update = sneaky.insert(0, "SNEAKED ")
        real = h.collab.host.command
        await restart_host_with(h, [sys.executable, str(HALF_APPLYING_HOST), sneaky_update.hex()])
        ack = await a.send(a.replica.insert(4, "!"))
        assert ack["error"] == "bad_request"
        await restart_host_with(h, real)
        a.replica = PyReplica()  # that client's copy has the refused edit: start over
        b = Editor(await h.connect(tok_b), PyReplica())
        await b.join()
        assert b.pull() == "kept"
        assert await api_text(h) == "kept"
        await a.join()
        await a.type(4, " going")
        await eventually(lambda: b.pull() == "kept going")


async def test_a_crashed_document_host_costs_nothing_stored(tmp_path):
    """The process holding the pycrdt copies dies (SIGKILL) between edits: a new one
    loads the documents from the store at next use; editing goes on, nothing acked is
    lost, and the appliance itself never stopped serving."""
    async with documents(tmp_path) as h:
        a, b = await two_writers(h)
        await a.type(0, "before ")
        await eventually(lambda: b.pull() == "before ")
        first = h.collab.host.generation
        await restart_host_with(h, h.collab.host.command)
        assert await b.send(b.replica.insert(7, "after")) == {"ok": True}
        await eventually(lambda: a.pull() == "before after")
        assert h.collab.host.generation != first and h.collab.host.restarts == 1
        assert await api_text(h) == "before after"


async def test_awareness_is_relayed_and_never_stored(tmp_path):
    async with documents(tmp_path) as h:
        tok_a, tok_b = await h.user("a", "Ann"), await h.user("b")
        await setup_note(h, owner="a", read=["b"])
        a, b = await h.connect(tok_a), await h.connect(tok_b)
        for c in (a, b):
            await c.call("ydoc:document:join", {"document_id": DOC}, timeout=WAIT)
        # readers send awareness too (their cursor)
        await b.emit("ydoc:awareness:update", {"document_id": DOC, "update": [1, 2, 3],
                                               "user_id": "forged"})
        await a.emit("ydoc:awareness:update", {"document_id": DOC, "update": b"\x04\x05"})
        assert await a.rec.wait_for("ydoc:awareness:update") == {
            "document_id": DOC, "user_id": "b", "update": [1, 2, 3]}
        assert await b.rec.wait_for("ydoc:awareness:update") == {
            "document_id": DOC, "user_id": "a", "update": b"\x04\x05"}
        assert await stored(h) is None
        ack = await a.call("ydoc:awareness:update", {"document_id": DOC, "update": "x"},
                           timeout=WAIT)
        assert ack["error"] == "bad_request"


async def test_leave_disconnect_and_the_last_editor_keeps_the_document(tmp_path):
    async with documents(tmp_path) as h:
        tok_a, tok_b = await h.user("a", "Ann"), await h.user("b", "Bob")
        await setup_note(h, owner="a", write=["b"])
        a = Editor(await h.connect(tok_a), PyReplica())
        b = Editor(await h.connect(tok_b), PyReplica())
        await a.join(user_color="#0a0")
        await b.join()
        await a.type(0, "stays")
        assert await a.client.call("ydoc:document:leave", {"document_id": DOC},
                                   timeout=WAIT) == {"ok": True}
        assert await b.client.rec.wait_for("ydoc:user:left") == {
            "document_id": DOC, "user_id": "a", "user_name": "Ann", "user_color": "#0a0"}
        assert "doc_note:n1" not in h.app.sio.rooms(a.client.get_sid())
        assert a.client.get_sid() not in h.collab.joined
        # a left session cannot write any more
        ack = await a.send(a.replica.insert(0, "x"))
        assert ack["error"] == "forbidden"
        # the last editor goes away by disconnecting: presence cleaned through the per-sid
        # index, the document leaves memory and stays stored
        sid_b = b.client.get_sid()
        await b.client.disconnect()
        await eventually(lambda: not h.collab.editors and not h.collab.joined)
        assert sid_b not in h.collab.joined
        await eventually(lambda: h.collab.open_count() == 0)
        assert await api_text(h) == "stays"
        again = Editor(await h.connect(tok_b), PyReplica())
        await again.join()
        assert again.pull() == "stays"


async def test_size_limits(tmp_path):
    ini = ("[documents]\nmax_update_bytes = 300\nmax_document_bytes = 2000\n"
           "compaction_threshold = 1000\n")
    async with documents(tmp_path, ini) as h:
        await setup_note(h, owner="a")
        a = Editor(await h.connect(await h.user("a")), PyReplica())
        await a.join()
        big = a.replica.insert(0, "x" * 400)
        assert (await a.send(big))["error"] == "too_large"
        assert (await a.send(big, as_list=True))["error"] == "too_large"
        a.replica = PyReplica()
        await a.join()
        n = 0
        while True:
            ack = await a.send(a.replica.insert(0, f"{n:04d}" + "y" * 100))
            if ack != {"ok": True}:
                break
            n += 1
        assert ack["error"] == "too_large" and n >= 10
        # the refused update is not in the document
        assert len(await api_text(h)) == n * 104
        ack = await a.client.call("ydoc:document:update", {
            "document_id": DOC, "update": a.replica.insert(0, "z"),
            "data": {"content": "c" * 3000}}, timeout=WAIT)
        assert ack["error"] == "too_large"


async def test_compaction_keeps_the_merged_state_and_survives_restart(tmp_path):
    ini = "[documents]\ncompaction_threshold = 10\n"
    async with documents(tmp_path, ini) as h:
        a, b = await two_writers(h)
        for i in range(35):
            editor = a if i % 2 else b
            editor.pull()
            await editor.type(len(editor.replica.value()), f"<{i}>")
            if i % 5 == 4:  # some deletions too
                editor.pull()
                await editor.send(editor.replica.delete(0, 1))
        await eventually(lambda: a.pull() == b.pull())
        text = a.pull()
        assert "<34>" in text
        await eventually(lambda: h.collab.counts["compactions"] >= 3)
        doc = await stored(h)
        assert doc.snapshot is not None and len(doc.updates) <= 10
        # what the store holds merges to exactly what the editors have
        merged = pycrdt.Doc()
        merged.apply_update(pycrdt.merge_updates(doc.snapshot, *doc.updates) if doc.updates
                            else doc.snapshot)
        assert str(merged.get("t", type=pycrdt.Text)) == text
        late = Editor(await h.connect(await h.user("c", role="admin")), PyReplica())
        await late.join()
        assert late.pull() == text
        sv_live = h.collab.docs[DOC].sv
    # restart: a new appliance on the same data dir loads snapshot + log
    async with documents(tmp_path, ini) as h2:
        again = Editor(await h2.connect(h2.token("a")), PyReplica("ypy" if y_py else "pycrdt"))
        await again.join()
        assert again.pull() == text
        assert h2.collab.docs[DOC].sv == sv_live
        await again.type(0, "after restart: ")
        assert await api_text(h2) == "after restart: " + text


async def test_rendered_content_is_debounced_and_flushed_on_stop(tmp_path):
    ini = "[documents]\ncontent_debounce = 30\n"
    async with documents(tmp_path, ini) as h:
        await setup_note(h, owner="a")
        a = Editor(await h.connect(await h.user("a")), PyReplica())
        await a.join()
        for word in ("one", "two", "three"):
            await a.type(0, word, data={"content": {"md": word, "html": f"<p>{word}</p>"}})
        status, body = await h.api("GET", f"/api/v1/documents/{DOC}")
        # the latest content at once through the API, not yet written to the store
        assert body["content"] == {"md": "three", "html": "<p>three</p>"}
        assert (await stored(h)).content is None
        assert body["updated_at"] == pytest.approx(time.time(), abs=5)
    # stop flushed it
    async with documents(tmp_path, ini) as h2:
        status, body = await h2.api("GET", f"/api/v1/documents/{DOC}")
        assert status == 200 and body["content"] == {"md": "three", "html": "<p>three</p>"}
        assert state_text(base64.b64decode(body["state_b64"])) == "threetwoone"
    async with documents(tmp_path / "b", "[documents]\ncontent_debounce = 0.05\n") as h3:
        await setup_note(h3, owner="a")
        a = Editor(await h3.connect(await h3.user("a")), PyReplica())
        await a.join()
        await a.type(0, "x", data={"content": "plain text"})
        await eventually(lambda: not h3.collab.pending_content)
        assert (await stored(h3)).content == '"plain text"'
        status, body = await h3.api("GET", f"/api/v1/documents/{DOC}")
        assert body["content"] == "plain text"


async def test_documents_api(tmp_path):
    async with documents(tmp_path) as h:
        a, b = await two_writers(h)
        await a.type(0, "to be deleted")
        assert (await h.api("GET", f"/api/v1/documents/{DOC}", key=None))[0] == 401
        assert (await h.api("GET", f"/api/v1/documents/{DOC}", key="wrong-key-123"))[0] == 401
        assert (await h.api("GET", "/api/v1/documents/note:nothing"))[0] == 404
        status, body = await h.api("GET", "/api/v1/documents/note%3An1")  # escaped ':' too
        assert status == 200 and set(body) == {"document_id", "state_b64", "content", "updated_at"}
        assert body["document_id"] == DOC and body["content"] is None
        assert state_text(base64.b64decode(body["state_b64"])) == "to be deleted"
        # DELETE removes it everywhere: store, memory, room; editors have to join again
        assert await h.api("DELETE", f"/api/v1/documents/{DOC}") == (200, {"deleted": DOC})
        assert (await h.api("GET", f"/api/v1/documents/{DOC}"))[0] == 404
        assert (await h.api("DELETE", f"/api/v1/documents/{DOC}"))[0] == 404
        assert await stored(h) is None
        assert h.collab.open_count() == 0 and not h.collab.editors
        assert "doc_note:n1" not in h.app.sio.rooms(b.client.get_sid())
        ack = await a.send(a.replica.insert(0, "x"))
        assert ack["error"] == "forbidden"
        fresh = Editor(a.client, PyReplica())
        await fresh.join()
        assert fresh.pull() == ""
        await fresh.type(0, "new life")
        assert await api_text(h) == "new life"


async def test_revoking_access_removes_live_sessions(tmp_path):
    async with documents(tmp_path) as h:
        await setup_note(h, owner="a", write=["b"], read=["c"])
        a = Editor(await h.connect(await h.user("a", "Ann")), PyReplica())
        b = Editor(await h.connect(await h.user("b", "Bob")), PyReplica())
        c = Editor(await h.connect(await h.user("c", "Cat")), PyReplica())
        for e in (a, b, c):
            await e.join()
        # c loses read access, b is downgraded to read
        await setup_note(h, owner="a", read=["b"])
        left = await a.client.rec.wait_for("ydoc:user:left")
        assert left["user_id"] == "c"
        assert "doc_note:n1" not in h.app.sio.rooms(c.client.get_sid())
        assert c.client.get_sid() not in h.collab.editors[DOC]
        assert (await c.send(PyReplica().insert(0, "x")))["error"] == "forbidden"
        assert (await b.send(PyReplica().insert(0, "x")))["error"] == "forbidden"
        await a.type(0, "secret")
        await eventually(lambda: b.pull() == "secret")
        await asyncio.sleep(0.1)
        assert c.pull() == ""  # nothing reaches a revoked session
        # deleting the note removes everybody
        assert (await h.api("DELETE", "/api/v1/notes/n1"))[0] == 200
        await eventually(lambda: DOC not in h.collab.editors)
        assert (await a.send(a.replica.insert(0, "y")))["error"] == "forbidden"
        ack = await a.client.call("ydoc:document:join", {"document_id": DOC}, timeout=WAIT)
        assert ack["error"] == "not_found"


# ---------------------------------------------------------------------- helpers
def _deep_any(client_id: int, depth: int) -> bytes:
    """One item in root 't' whose content is an array nested `depth` times."""
    content = var(1) + bytes([117]) + (var(1) + bytes([117])) * (depth - 1) + var(0)
    return (var(1) + var(1) + var(client_id) + var(0) + bytes([8]) + var(1) + var(1)
            + b"t" + content + var(0))
