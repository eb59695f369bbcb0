"""Documents with real browser-side clients: Node socket.io-client 4.8 + npm yjs 13.6
(tests/node/driver.mjs), next to python-socketio clients whose replicas are y-py and
pycrdt. Three Yjs implementations edit one note through the appliance and must converge;
the state the appliance returns must load in npm yjs and in y-py. open-webui 0.12's seed
of an empty note (`initialize`) is applied exactly as its editor applies it, on one node
and by two editors racing on two nodes that share a Redis."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from pathlib import Path

import pycrdt
import pytest

from rt.app import Appliance
from rt.backends.factory import build_redis_backend
from rt.backends.redis_conn import RedisTarget
from tests.integration.test_documents import (
    DOC,
    FAST,
    Editor,
    PyReplica,
    documents,
    eventually,
    setup_note,
    y_py,
)
from tests.support.appliance import WAIT, Harness, settings_for
from tests.support.node_fixtures import node_driver, node_driver_factory  # noqa: F401
from tests.support.redis_servers import redis_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio


class NodeEditor:
    """A Node socket.io-client socket with an npm yjs document of the same name."""

    def __init__(self, driver, sock, name: str):
        self.driver, self.sock, self.name = driver, sock, name
        self.applied = 0

    @classmethod
    async def start(cls, driver, h, name: str, token: str) -> NodeEditor:
        sock = await driver.connect(name, h.url, path=h.path, transports=["websocket"],
                                    auth={"token": token}, reconnection=False, forceNew=True)
        await driver.ydoc_new(name)
        return cls(driver, sock, name)

    async def join(self) -> None:
        ack = await self.sock.emit("ydoc:document:join", {
            "document_id": DOC, "user_id": "forged", "user_name": "Forged",
            "user_color": "#abcdef"}, ack=True, timeout=WAIT)
        assert ack == [{"ok": True}]
        # the first argument; an offset of connection state recovery may follow
        state = (await self.sock.wait_for("ydoc:document:state", timeout=WAIT))[0]
        await self.driver.ydoc_apply(self.name, bytes(state["state"]))

    async def pull(self) -> str:
        updates = self.sock.received("ydoc:document:update")
        for args in updates[self.applied:]:
            await self.driver.ydoc_apply(self.name, bytes(args[0]["update"]))
        self.applied = len(updates)
        return await self.driver.ydoc_text(self.name, "t")

    async def type(self, index: int, chunk: str) -> None:
        update = await self.driver.ydoc_insert(self.name, index, chunk, text_name="t")
        # binary, as socket.io-client sends a Uint8Array
        ack = await self.sock.emit("ydoc:document:update", {
            "document_id": DOC, "update": update, "user_id": "forged",
            "data": {"content": {"md": chunk}}}, ack=True, timeout=WAIT)
        assert ack == [{"ok": True}], ack


async def converge(editors, nodes, timeout: float = WAIT) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        texts = [e.pull() for e in editors] + [await n.pull() for n in nodes]
        if len(set(texts)) == 1:
            return texts[0]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no convergence within {timeout} s: {texts}")
        await asyncio.sleep(0.02)


async def test_python_and_node_clients_edit_one_note_and_converge(tmp_path, node_driver):
    async with documents(tmp_path) as h:
        tok = {u: await h.user(u, u.upper()) for u in ("a", "b", "n", "late")}
        await setup_note(h, owner="a", write=["b", "n"], read=["late"])
        a = Editor(await h.connect(tok["a"]), PyReplica("ypy" if y_py else "pycrdt"))
        b = Editor(await h.connect(tok["b"]), PyReplica("pycrdt"))
        n = await NodeEditor.start(node_driver, h, "n", tok["n"])
        await a.join()
        await b.join()
        await n.join()
        joined = await a.client.rec.wait_for("ydoc:user:joined", lambda d: d["user_id"] == "n")
        assert joined == {"document_id": DOC, "user_id": "n", "user_name": "N",
                          "user_color": "#abcdef"}

        await a.type(0, "Hello")
        assert await converge([a, b], [n]) == "Hello"
        # concurrent edits from the three implementations
        await asyncio.gather(a.type(5, " from y-py"), b.type(0, "[pycrdt] "), n.type(0, "[yjs] "))
        for i in range(10):  # and a burst of interleaved ones
            await asyncio.gather(a.type(0, f"a{i}"), n.type(0, f"n{i}"),
                                 b.type(len(b.pull()), f"b{i}"))
        text = await converge([a, b], [n])
        for piece in ("Hello", " from y-py", "[pycrdt] ", "[yjs] ", "a9", "n9", "b9"):
            assert piece in text
        relayed = [args[0] for args in n.sock.received("ydoc:document:update")]
        assert {d["user_id"] for d in relayed} == {"a", "b"}  # identities, never "forged"
        assert all(d["socket_id"] in (a.client.get_sid(), b.client.get_sid()) for d in relayed)
        got = [d for d in b.client.rec.of("ydoc:document:update") if d["user_id"] == "n"]
        assert got and all(d["socket_id"] == n.sock.sid for d in got)

        # a late joiner (another Node client) receives the full state
        late = await NodeEditor.start(node_driver, h, "late", tok["late"])
        await late.join()
        assert await late.pull() == text

        # the appliance's state loads in npm yjs, y-py and pycrdt alike
        status, body = await h.api("GET", f"/api/v1/documents/{DOC}")
        assert status == 200
        state = base64.b64decode(body["state_b64"])
        await node_driver.ydoc_new("from-api")
        await node_driver.ydoc_apply("from-api", state)
        assert await node_driver.ydoc_text("from-api", "t") == text
        check = PyReplica("pycrdt")
        check.apply(state)
        assert check.value() == text
        if y_py is not None:
            ypy = PyReplica("ypy")
            ypy.apply(state)
            assert ypy.value() == text
        assert body["content"] is not None  # the last rendered content a Node client sent


@pytest.mark.skipif(y_py is None, reason="y-py has no wheel for this Python")
async def test_updates_made_offline_by_ypy_and_yjs_merge_in_the_appliance(tmp_path, node_driver):
    """Histories written apart (no relay between them) by y-py and by npm yjs, sent as
    whole states, merge in the appliance; its state reads back in both."""
    async with documents(tmp_path) as h:
        await setup_note(h, owner="a", write=["n"])
        a = Editor(await h.connect(await h.user("a")), PyReplica("ypy"))
        n = await NodeEditor.start(node_driver, h, "n", await h.user("n"))
        await a.join()
        await n.join()
        # both edit offline first
        for chunk in ("y-py one. ", "y-py two. "):
            a.replica.insert(len(a.replica.value()), chunk)
        await node_driver.ydoc_insert("n", 0, "yjs one. ", text_name="t")
        await node_driver.ydoc_delete("n", 0, 4, text_name="t")
        # then each sends its whole state (as a reconnecting editor would)
        ypy_state = bytes(y_py.encode_state_as_update(a.replica.doc))
        assert await a.send(ypy_state, as_list=True) == {"ok": True}
        yjs_state = await node_driver.ydoc_state("n")
        ack = await n.sock.emit("ydoc:document:update", {"document_id": DOC, "update": yjs_state},
                                ack=True, timeout=WAIT)
        assert ack == [{"ok": True}]
        text = await converge([a], [n])
        assert "y-py one. y-py two. " in text and "one. " in text and len(text) == 25
        status, body = await h.api("GET", f"/api/v1/documents/{DOC}")
        state = base64.b64decode(body["state_b64"])
        fresh = PyReplica("ypy")
        fresh.apply(state)
        assert fresh.value() == text
        await node_driver.ydoc_new("fresh")
        await node_driver.ydoc_apply("fresh", state)
        assert await node_driver.ydoc_text("fresh", "t") == text
        doc = pycrdt.Doc()
        doc.apply_update(state)
        assert str(doc.get("t", type=pycrdt.Text)) == text


# ---------------------------------------------------------------------- initialize
def paragraph(text: str) -> str:
    """The editor's XmlFragment 'prosemirror' holding one paragraph of `text`."""
    return f"<paragraph>{text}</paragraph>"


async def test_open_webui_editors_seed_an_empty_note_and_apply_the_stored_state(
        tmp_path, node_driver):
    async with documents(tmp_path) as h:
        tok = {u: await h.user(u) for u in ("n1", "n2", "late")}
        await setup_note(h, owner="n1", write=["n2"], read=["late"])
        n1 = await NodeEditor.start(node_driver, h, "n1", tok["n1"])
        n2 = await NodeEditor.start(node_driver, h, "n2", tok["n2"])
        for editor in (n1, n2):
            await editor.join()
        state = n1.sock.received("ydoc:document:state")[0][0]
        assert state["state"] == b"\x00\x00" and state["content"] is None  # empty: both seed

        # the first seed is stored; its ack is the seed itself, which the editor applies
        first = await node_driver.ydoc_initialize("n1", "n1", DOC, "Seeded by n1")
        assert first["apply_error"] is None and first["applied"] is True
        assert first["ack"] == list(first["seed"])  # a list of ints, as open-webui sends
        assert await node_driver.ydoc_xml("n1") == paragraph("Seeded by n1")

        # the second seed loses: its ack is the stored state, applied without error and
        # without doubling the text, also once the relayed seed is applied on top
        second = await node_driver.ydoc_initialize("n2", "n2", DOC, "Seeded by n2")
        assert second["apply_error"] is None and second["applied"] is True
        assert await node_driver.ydoc_xml("n2") == paragraph("Seeded by n1")
        await n2.sock.wait_for("ydoc:document:update", timeout=WAIT)
        await n2.pull()
        assert await node_driver.ydoc_xml("n2") == paragraph("Seeded by n1")
        assert len((await h.app.backend.store.load_document(DOC)).updates) == 1

        # the snapshot of the merged content, as the editor sends it (no update, no ack)
        content = {"md": "Seeded by n1", "html": "<p>Seeded by n1</p>", "json": {"type": "doc"}}
        await n2.sock.emit("ydoc:document:update", {"document_id": DOC,
                                                     "data": {"content": content}}, ack=False)
        await eventually(lambda: h.collab.pending_content.get(DOC) is not None)
        assert n2.sock.received("error") == []

        # a late joiner gets the seeded state and the content
        late = await NodeEditor.start(node_driver, h, "late", tok["late"])
        await late.join()
        state = late.sock.received("ydoc:document:state")[0][0]
        assert state["content"] == content
        assert await node_driver.ydoc_xml("late") == paragraph("Seeded by n1")


@contextlib.asynccontextmanager
async def redis_node(tmp_path: Path, target: RedisTarget):
    """An in-process appliance on the Redis backend (one of several sharing `target`)."""
    settings = settings_for(tmp_path, FAST)
    app = Appliance(settings, backend=build_redis_backend(settings, target))
    await app.start()
    h = Harness(app)
    h.collab = app.documents
    try:
        yield h
    finally:
        await h.close()
        await app.stop()


async def test_two_editors_on_two_nodes_racing_to_seed_store_one_seed(
        tmp_path, node_driver, redis_server):
    target = RedisTarget(url=redis_server.url, key_prefix=f"rt-it-{uuid.uuid4().hex[:10]}")
    async with redis_node(tmp_path / "a", target) as a, redis_node(tmp_path / "b", target) as b:
        tokens = {"x": await a.user("x"), "y": await a.user("y")}
        for round_ in range(5):  # several documents: the seeds interleave differently
            note = f"race{round_}"
            document_id = f"note:{note}"
            await setup_note(b, owner="x", write=["y"], note=note)
            editors = {}
            for user, h in (("x", a), ("y", b)):
                name = f"{user}{round_}"
                sock = await node_driver.connect(name, h.url, path=h.path,
                                                 transports=["websocket"],
                                                 auth={"token": tokens[user]},
                                                 reconnection=False, forceNew=True)
                await node_driver.ydoc_new(name)
                ack = await sock.emit("ydoc:document:join", {"document_id": document_id},
                                      timeout=WAIT)
                assert ack == [{"ok": True}]
                state = (await sock.wait_for("ydoc:document:state", timeout=WAIT))[0]
                assert state["state"] == b"\x00\x00"  # binary: empty
                editors[user] = name

            results = await asyncio.gather(*(
                node_driver.ydoc_initialize(name, name, document_id, f"seed of {user}")
                for user, name in editors.items()))

            stored = await a.app.backend.store.load_document(document_id)
            assert stored.snapshot is None and len(stored.updates) == 1  # exactly one seed
            winners = [r for r in results if r["ack"] == list(r["seed"])]
            assert len(winners) == 1 and stored.updates[0] == winners[0]["seed"]
            texts = set()
            for result, name in zip(results, editors.values()):
                assert result["apply_error"] is None and result["applied"] is True
                texts.add(await node_driver.ydoc_xml(name))
            # both editors hold the winning seed, once
            assert len(texts) == 1 and texts.pop() in {paragraph("seed of x"),
                                                       paragraph("seed of y")}
