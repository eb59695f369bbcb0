"""open-webui 0.12's document flows (protocol §3 `ydoc:document:update` forms, §3.1) on a
real in-process appliance with real python-socketio clients: the `initialize` seed (first
write wins, the ack is a state or null), content-only updates, `content` in the join
state, and the two seams for another source of truth: `note_access` decides every right,
`on_content` hears every stored rendered content.

The npm yjs client and the race between two nodes are in test_documents_node.py."""
from __future__ import annotations

import asyncio
import logging

import pytest

from rt.auth import Identity
from tests.integration.test_documents import (
    DOC,
    Editor,
    PyReplica,
    api_text,
    documents,
    eventually,
    setup_note,
    state_text,
    stored,
)
from tests.support.appliance import WAIT

pytestmark = pytest.mark.asyncio

UPDATE = "ydoc:document:update"


def seed(text: str) -> bytes:
    """What an editor that found the document empty sends: a whole state of its own."""
    return PyReplica().insert(0, text)


async def initialize(client, update, document_id: str = DOC, **extra) -> list | None:
    return await client.call(UPDATE, {"document_id": document_id, "update": update,
                                      "initialize": True, **extra}, timeout=WAIT)


# ---------------------------------------------------------------------- initialize
async def test_first_seed_is_stored_and_returned_later_seeds_get_the_stored_state(tmp_path):
    async with documents(tmp_path) as h:
        await setup_note(h, owner="a", write=["b"])
        a = Editor(await h.connect(await h.user("a")), PyReplica())
        b = Editor(await h.connect(await h.user("b")), PyReplica())
        await a.join()
        await b.join()  # both saw the document empty: both will seed it

        first = seed("from a")
        ack = await initialize(a.client, list(first))
        # the client's own update, as a list of ints: it applies it to its own document
        assert ack == list(first)
        assert (await stored(h)).updates == [first]
        relayed = await b.client.rec.wait_for(UPDATE)  # the others get the seed as an update
        assert relayed["user_id"] == "a" and relayed["update"] == first  # binary

        # b's seed loses: its ack is the stored state, never its own update again
        ack = await initialize(b.client, seed("from b"))
        assert isinstance(ack, list) and state_text(bytes(ack)) == "from a"
        assert (await stored(h)).updates == [first]
        await asyncio.sleep(0.1)
        assert len(a.client.rec.of(UPDATE)) == 0  # nothing relayed for a losing seed

        # after edits, a seed gets the merged state of the whole document
        a.replica.apply(first)
        await a.type(len("from a"), ", edited")
        ack = await initialize(b.client, seed("late"), data={"content": {"md": "late"}})
        assert state_text(bytes(ack)) == "from a, edited"
        assert (await stored(h)).content is None  # a losing seed's content is dropped too
        assert await api_text(h) == "from a, edited"


async def test_a_seed_may_follow_content_and_comes_with_content(tmp_path):
    async with documents(tmp_path, "[documents]\ncontent_debounce = 0\n") as h:
        await setup_note(h, owner="a")
        a = Editor(await h.connect(await h.user("a")), PyReplica())
        await a.join()
        # the empty update seeds nothing: the (empty) state comes back, nothing is stored
        assert await initialize(a.client, [0, 0]) == [0, 0]
        assert await stored(h) is None
        # rendered content alone is no seed: the first Yjs update still wins
        assert await a.client.call(UPDATE, {"document_id": DOC, "data": {"content": "c1"}},
                                   timeout=WAIT) == {"ok": True}
        first = seed("seeded")
        assert await initialize(a.client, first, data={"content": {"md": "seeded"}}) == list(first)
        doc = await stored(h)
        assert doc.updates == [first] and doc.content == '{"md":"seeded"}'


async def test_a_refused_seed_acks_null_and_says_why_in_an_error_event(tmp_path):
    ini = "[documents]\nmax_update_bytes = 300\nnamespaces = note, scratch\n"
    async with documents(tmp_path, ini) as h:
        await setup_note(h, owner="a", read=["r"])
        a = await h.connect(await h.user("a"))
        r = await h.connect(await h.user("r"))
        for client in (a, r):
            assert await client.call("ydoc:document:join", {"document_id": DOC},
                                     timeout=WAIT) == {"ok": True}
        outsider = await h.connect(await h.user("o"))  # never joined
        good = seed("x")
        cases = [
            (r, {"document_id": DOC, "update": good}, "forbidden"),
            (outsider, {"document_id": DOC, "update": good}, "forbidden"),
            (a, {"document_id": DOC, "update": b"\x07\x00\xffgarbage"}, "bad_request"),
            (a, {"document_id": DOC, "update": [1, 300]}, "bad_request"),
            (a, {"document_id": DOC}, "bad_request"),
            (a, {"document_id": 7, "update": good}, "bad_request"),
            (a, {"document_id": DOC, "update": seed("y" * 400)}, "too_large"),
            (a, {"document_id": DOC, "update": good, "data": {"content": b"bin"}}, "bad_request"),
            (a, {"document_id": "note:missing", "update": good}, "forbidden"),  # not joined
        ]
        for client, payload, code in cases:
            before = len(client.rec.of("error"))
            ack = await client.call(UPDATE, {**payload, "initialize": True}, timeout=WAIT)
            assert ack is None, (payload, ack)  # the editor skips a null ack
            await eventually(lambda: len(client.rec.of("error")) > before)
            error = client.rec.of("error")[-1]
            assert error["error"] == code and error["event"] == UPDATE, (payload, error)
            assert error["message"]
        assert await stored(h) is None  # nothing of any of them stored
        assert h.app.gateway.errors["forbidden"] >= 3
        # `initialize` that is not a boolean is no seed: an ordinary refusal in the ack
        ack = await a.call(UPDATE, {"document_id": DOC, "update": good, "initialize": "yes"},
                           timeout=WAIT)
        assert ack["error"] == "bad_request"
        # and the document can still be seeded
        assert await initialize(a, good) == list(good)


# ---------------------------------------------------------------------- content
async def test_content_only_updates_from_writers_are_stored_and_sent_on_join(tmp_path):
    ini = "[documents]\ncontent_debounce = 0.05\nmax_document_bytes = 5000\n"
    async with documents(tmp_path, ini) as h:
        await setup_note(h, owner="a", read=["r"])
        a = Editor(await h.connect(await h.user("a")), PyReplica())
        r = Editor(await h.connect(await h.user("r")), PyReplica())
        await a.join()
        await r.join()
        await a.type(0, "text")
        content = {"md": "text", "html": "<p>text</p>", "json": {"type": "doc"}}
        ack = await a.client.call(UPDATE, {"document_id": DOC, "data": {"content": content}},
                                  timeout=WAIT)
        assert ack == {"ok": True}
        await eventually(lambda: not h.collab.pending_content)
        assert (await stored(h)).content is not None
        status, body = await h.api("GET", f"/api/v1/documents/{DOC}")
        assert body["content"] == content
        # the join state carries it, as open-webui 0.12.4 sends the note's content
        late = await h.connect(await h.user("late", role="admin"))
        await late.call("ydoc:document:join", {"document_id": DOC}, timeout=WAIT)
        state = await late.rec.wait_for("ydoc:document:state")
        assert state["content"] == content and state_text(bytes(state["state"])) == "text"

        # refused: a reader, a session that did not join, malformed content
        outsider = await h.connect(h.token("a"))
        for client, payload, code in (
                (r.client, {"data": {"content": "no"}}, "forbidden"),
                (outsider, {"data": {"content": "no"}}, "forbidden"),
                (a.client, {"data": {"content": b"binary"}}, "bad_request"),
                (a.client, {"data": {"content": "c" * 6000}}, "too_large"),
                (a.client, {"data": {}}, "bad_request"),
                (a.client, {"data": "text"}, "bad_request"),
                (a.client, {}, "bad_request")):
            ack = await client.call(UPDATE, {"document_id": DOC, **payload}, timeout=WAIT)
            assert ack["error"] == code, (payload, ack)
        await asyncio.sleep(0.1)
        assert not h.collab.pending_content
        status, body = await h.api("GET", f"/api/v1/documents/{DOC}")
        assert body["content"] == content


# ---------------------------------------------------------------------- the seams
async def test_rights_come_from_note_access_and_content_goes_to_on_content(tmp_path, caplog):
    # a debounce longer than the test: the content is stored when the test flushes it
    async with documents(tmp_path, "[documents]\ncontent_debounce = 600\n") as h:
        # no note in the directory: every right comes from the injected source
        rights: dict[str, str | None] = {"w": "write", "r": "read", "x": None}
        asked: list[tuple[str, str]] = []

        async def note_access(identity: Identity, note_id: str) -> str | None:
            asked.append((identity.id, note_id))
            return rights.get(identity.id)

        heard: list[tuple[str, str, Identity]] = []

        async def on_content(document_id: str, text: str, editor: Identity) -> None:
            heard.append((document_id, text, editor))

        h.collab.note_access, h.collab.on_content = note_access, on_content
        w = Editor(await h.connect(await h.user("w", "Wanda")), PyReplica())
        w2 = Editor(await h.connect(await h.user("w2", "Walt")), PyReplica())
        r = Editor(await h.connect(await h.user("r")), PyReplica())
        x = await h.connect(await h.user("x"))
        rights["w2"] = "write"
        for editor in (w, w2, r):
            await editor.join()
        assert ("w", "n1") in asked  # asked with the note id, not the document id
        ack = await x.call("ydoc:document:join", {"document_id": DOC}, timeout=WAIT)
        assert ack["error"] == "forbidden"
        assert (await r.send(r.replica.insert(0, "no")))["error"] == "forbidden"
        await w.type(0, "hello", data={"content": {"md": "hello"}})
        await w2.client.call(UPDATE, {"document_id": DOC, "data": {"content": {"md": "hi"}}},
                             timeout=WAIT)
        assert heard == [] and (await stored(h)).content is None  # still debounced
        await h.collab.flush()
        # once per debounce, with the last editor's identity
        assert heard == [(DOC, '{"md":"hi"}', Identity("w2", "Walt", "user"))]
        assert (await stored(h)).content == '{"md":"hi"}'

        # rights change: whoever learns it asks for a re-check; the reader loses access
        rights["r"] = None
        await h.collab.recheck_access(DOC)
        left = await w.client.rec.wait_for("ydoc:user:left")
        assert left["user_id"] == "r"
        assert "doc_note:n1" not in h.app.sio.rooms(r.client.get_sid())
        assert r.client.get_sid() not in h.collab.editors[DOC]

        # a failing hook is logged; the content is stored all the same
        async def broken(document_id: str, text: str, editor: Identity) -> None:
            raise RuntimeError("open-webui is down")

        h.collab.on_content = broken
        caplog.set_level(logging.ERROR, logger="rt.documents")
        await w.client.call(UPDATE, {"document_id": DOC, "data": {"content": "later"}},
                            timeout=WAIT)
        await h.collab.flush()
        assert "the content hook failed" in caplog.text
        assert (await stored(h)).content == '"later"'


async def test_directory_acl_changes_go_through_note_access(tmp_path):
    """The directory's own hook re-checks through the same callable (no second path)."""
    async with documents(tmp_path) as h:
        await setup_note(h, owner="a", write=["b"])
        a = Editor(await h.connect(await h.user("a")), PyReplica())
        b = Editor(await h.connect(await h.user("b")), PyReplica())
        await a.join()
        await b.join()
        asked: list[str] = []
        directory_access = h.collab.note_access

        async def counting(identity: Identity, note_id: str) -> str | None:
            asked.append(identity.id)
            return await directory_access(identity, note_id)

        h.collab.note_access = counting
        await setup_note(h, owner="a")  # b loses access
        assert (await a.client.rec.wait_for("ydoc:user:left"))["user_id"] == "b"
        assert sorted(asked) == ["a", "b"]
        assert (await b.send(b.replica.insert(0, "x")))["error"] == "forbidden"
