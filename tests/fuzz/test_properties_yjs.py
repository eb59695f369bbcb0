"""Yjs update intake (rt.collab through the real ydoc:document:update event, pycrdt
underneath) in a real appliance in process: a refused update is refused with
bad_request/too_large and leaves the document's state bytes, its content and the store as
they were; what real editors send is accepted and ends up in the document."""
from __future__ import annotations

import random

import fuzzlib
import pycrdt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
DOC = "note:n1"


@pytest.fixture(scope="module")
def world():
    with fuzzlib.WorldRunner() as runner:
        yield runner


def _edits(doc: pycrdt.Doc, seed: int, count: int) -> None:
    """Random edits of a text, a map and an array (text indexes are UTF-8 offsets in
    pycrdt: only character boundaries are used)."""
    rnd = random.Random(seed)
    text = doc.get("t", type=pycrdt.Text)
    mapping = doc.get("m", type=pycrdt.Map)
    array = doc.get("a", type=pycrdt.Array)
    for _ in range(count):
        op = rnd.randrange(6)
        with doc.transaction():
            current = str(text)

            def at(k: int) -> int:
                return len(current[:k].encode())

            if op == 0 and current:
                k = rnd.randrange(len(current))
                del text[at(k):at(k + rnd.randint(1, 3))]
            elif op == 1:
                mapping[rnd.choice("abc")] = rnd.choice([1, "x", None, [1, {"y": 2}], 2.5])
            elif op == 2:
                array.append(rnd.choice([b"\x00", "s", 3, {"k": [True]}]))
            elif op == 3 and len(array):
                del array[rnd.randrange(len(array))]
            elif op == 4 and current:
                k = rnd.randrange(len(current))
                text.format(at(k), at(min(len(current), k + 2)), {"bold": True})
            else:
                k = rnd.randrange(len(current) + 1)
                text.insert(at(k), rnd.choice(["a", "bc", "\u00e9", "\U0001f600", "\n"]))


async def _editor_session(w: fuzzlib.World, client: int, seed: int, count: int,
                          as_list: bool) -> None:
    """A real editor: syncs the document, edits it, sends each transaction's update."""
    state = await w.document_state(DOC)
    doc = pycrdt.Doc(client_id=client)
    if state is not None:
        doc.apply_update(state[0])
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    _edits(doc, seed, count)
    for update in updates:
        out = await w.check_update(list(update) if as_list else update, DOC)
        assert not out.refused, (out, update.hex())
    after = await w.document_state(DOC)
    assert fuzzlib.canonical_state(after[0]) == fuzzlib.canonical_state(doc.get_update())


@settings(SETTINGS, max_examples=45)
@given(st.integers(1, 2**32 - 1), st.integers(0, 2**32), st.integers(1, 8), st.booleans())
def test_real_editors_are_accepted(world, client, seed, count, as_list):
    if world.runs and world.runs % 60 == 0:
        world.run(fuzzlib.World.reset_document)
    world.run(_editor_session, client, seed, count, as_list)


def _mutate(update: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(update)
    for kind, pos, value in ops:
        if not data:
            data.append(value)
            continue
        pos %= len(data) + (kind == 1)
        if kind == 0:
            data[pos % len(data)] = value
        elif kind == 1:
            data.insert(pos, value)
        elif kind == 2:
            del data[pos % len(data)]
        else:
            del data[pos % len(data):]
    return bytes(data)


async def _mutated(w: fuzzlib.World, seed: int, ops, content) -> None:
    doc = pycrdt.Doc(client_id=seed % (2**32 - 1) + 1)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    _edits(doc, seed, 3)
    for update in updates:
        await w.check_update(_mutate(update, ops), DOC, content=content)


@SETTINGS
@given(st.integers(0, 2**32), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 500),
                                                  st.integers(0, 255)), min_size=1, max_size=4),
       st.none() | st.just({"type": "doc"}))
def test_mutated_updates_are_refused_without_trace(world, seed, ops, content):
    if world.runs and world.runs % 60 == 0:
        world.run(fuzzlib.World.reset_document)
    world.run(_mutated, seed, ops, content)


@settings(SETTINGS, max_examples=120)
@given(st.binary(max_size=48) | st.lists(st.integers(-2, 300), max_size=24))
@example(b"")
@example(b"\x00\x00")
@example(b"\x00\x01\x05\x01\x00\x01")
@example(b"\x01\x01\x05\x00\x04")
@example(b"\x01\x01\x05\x00\x08\x01\x01t" + b"\x01\x75" * 40)
@example([0, 0])
@example([0, True])
def test_arbitrary_updates(world, update):
    world.run(fuzzlib.World.check_update, update, DOC)
