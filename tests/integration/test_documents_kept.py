"""A document stays loaded while it is used, and a kept copy is never stale: on several
nodes sharing Redis, every node answers joins and `GET /api/v1/documents/{id}` with every
acked update, whichever node acked it; a join reads from the store only what is new."""
from __future__ import annotations

import uuid

import pytest

from rt.backends.redis_conn import RedisTarget
from tests.integration.test_documents import (
    DOC,
    Editor,
    PyReplica,
    api_text,
    documents,
    setup_note,
)
from tests.integration.test_documents_node import redis_node
from tests.support.redis_servers import redis_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio


async def test_a_node_holding_an_editor_answers_with_updates_acked_elsewhere(
        tmp_path, redis_server):
    target = RedisTarget(url=redis_server.url, key_prefix=f"rt-it-{uuid.uuid4().hex[:10]}")
    async with redis_node(tmp_path / "a", target) as a, redis_node(tmp_path / "b", target) as b:
        await setup_note(a, owner="x", write=["y"], read=["z"])
        x = Editor(await a.connect(await a.user("x")), PyReplica())
        y = Editor(await b.connect(await b.user("y")), PyReplica())
        await x.join()  # node a keeps the document loaded from now on
        await y.join()
        await x.type(0, "from a ")
        await y.type(0, "from b ")  # acked by node b only
        expected = y.pull()
        assert await api_text(a) == expected  # node a, which holds x's copy
        assert await api_text(b) == expected
        # a late joiner on node a gets node b's update in its state, too
        z = Editor(await a.connect(await a.user("z")), PyReplica())
        await z.join()
        assert z.pull() == expected
        # and x, on node a, may build on what node b stored (no missing dependency)
        await x.type(len(x.pull()), "!")
        assert await api_text(b) == x.pull()


async def test_a_kept_copy_reads_only_what_other_nodes_added(tmp_path, redis_server):
    """Joins on a node that keeps the document loaded ask the store for the updates after
    its copy's last seq, never for the whole document again."""
    target = RedisTarget(url=redis_server.url, key_prefix=f"rt-it-{uuid.uuid4().hex[:10]}")
    async with redis_node(tmp_path / "a", target) as a, redis_node(tmp_path / "b", target) as b:
        await setup_note(a, owner="x", write=["y"], read=["z"])
        x = Editor(await a.connect(await a.user("x")), PyReplica())
        y = Editor(await b.connect(await b.user("y")), PyReplica())
        await x.join()
        await y.join()
        await x.type(0, "kept on a ")
        store = a.collab.store
        whole, tails = [], []
        real_load, real_tail = store.load_document, store.document_tail

        async def load(document_id):
            whole.append(document_id)
            return await real_load(document_id)

        async def tail(document_id, after_seq):
            tails.append(after_seq)
            return await real_tail(document_id, after_seq)

        store.load_document, store.document_tail = load, tail
        for word in ("one ", "two "):
            await y.type(0, word)  # acked by node b
            z = Editor(await a.connect(await a.user("z")), PyReplica())
            await z.join()  # on node a, which holds x's copy
            assert z.pull() == y.pull()
            await z.client.disconnect()
        assert whole == [] and len(tails) >= 2 and tails == sorted(tails)


async def test_joins_of_a_kept_document_do_not_reload_it(tmp_path):
    async with documents(tmp_path) as h:
        await setup_note(h, owner="a", read=["b"])
        a = Editor(await h.connect(await h.user("a")), PyReplica())
        await a.join()
        await a.type(0, "hello")
        doc = h.collab.docs[DOC]
        kept = doc.generation
        loads = []
        real_load = doc.load

        async def counting(store):
            loads.append(1)
            await real_load(store)

        doc.load = counting
        b = Editor(await h.connect(await h.user("b")), PyReplica())
        for _ in range(3):
            await b.join()
            assert b.pull() == "hello"
        # one node, one copy in one host process: never read again
        assert loads == [] and doc.loaded and doc.generation == kept
        state = await b.client.rec.wait_for("ydoc:document:state")
        assert isinstance(state["state"], bytes)  # one binary attachment
