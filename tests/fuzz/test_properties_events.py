"""Every client event's payload through a real appliance in process (fuzzlib.World: the
real SQLite store, python-socketio server, Engine.IO polling sessions, gateway and ydoc:*
handlers): always answered, never `internal`, nothing logged at ERROR, the connection
lives, and a refused event changes no state (rooms, sessions, presence, usage, document
editors, store rows, document states)."""
from __future__ import annotations

import fuzzlib
import pycrdt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

TOKENS = fuzzlib.tokens()
SCALARS = (st.none() | st.booleans() | st.integers(-2**64, 2**64)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(fuzzlib.IDS) | st.sampled_from(TOKENS) | st.binary(max_size=16)
           | st.lists(st.integers(-1, 300), max_size=12))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(fuzzlib.KEYS) | st.text(max_size=4), inner, max_size=5),
    max_leaves=16)


@st.composite
def payloads(draw) -> dict:
    """An object with the keys the handlers read, each valid, invalid or absent."""
    out = {}
    for key in draw(st.lists(st.sampled_from(fuzzlib.KEYS), max_size=6, unique=True)):
        if key in ("note_id", "document_id", "channel_id", "chat_id", "model", "message_id"):
            out[key] = draw(st.sampled_from(fuzzlib.IDS) | VALUES)
        elif key == "data":
            out[key] = draw(st.fixed_dictionaries(
                {"type": st.sampled_from(["typing", "last_read_at", "other", ""]) | VALUES},
                optional={"data": VALUES, "content": VALUES}) | VALUES)
        elif key == "auth":
            out[key] = draw(st.fixed_dictionaries(
                {}, optional={"token": st.sampled_from(TOKENS) | VALUES}) | VALUES)
        else:
            out[key] = draw(VALUES)
    return out


def _fresh_update(client: int, text: str) -> bytes:
    """A real update from a new editor: integrates into any document."""
    doc = pycrdt.Doc(client_id=client)
    doc.get("t", type=pycrdt.Text).insert(0, text)
    return doc.get_update()


UPDATES = st.builds(_fresh_update, st.integers(1, 2**32 - 1), st.text(min_size=1, max_size=6))
DOC_IDS = st.sampled_from(["note:n1", "note:n2", "note:n3", "note:n4", "note:nx", "scratch:a",
                           "scratch:b", "other:a", "note:"])
OPTIONAL = st.none() | VALUES
TEMPLATES = {
    "user-join": st.fixed_dictionaries({}, optional={"auth": st.fixed_dictionaries(
        {"token": st.sampled_from(TOKENS)})}),
    "join-channels": st.just({}),
    "join-note": st.fixed_dictionaries({"note_id": st.sampled_from(["n1", "n2", "n3", "n4",
                                                                    "nx"])}),
    "heartbeat": st.just({}) | st.none(),
    "usage": st.fixed_dictionaries({"model": st.sampled_from(["m1", "m2", "llama"])},
                                   optional={"chat_id": st.just("c"), "action": OPTIONAL}),
    "events:channel": st.fixed_dictionaries(
        {"channel_id": st.sampled_from(["c1", "c2", "cx"]),
         "data": st.fixed_dictionaries({"type": st.sampled_from(["typing", "last_read_at"])},
                                       optional={"data": VALUES})},
        optional={"message_id": st.just("m")}),
    "events:chat": st.fixed_dictionaries({"chat_id": st.sampled_from(["chat1", "chat2"]),
                                          "data": st.just({"type": "last_read_at"})}),
    "ydoc:document:join": st.fixed_dictionaries({"document_id": DOC_IDS},
                                                optional={"user_color": OPTIONAL}),
    "ydoc:document:state": st.fixed_dictionaries({"document_id": DOC_IDS}),
    "ydoc:document:leave": st.fixed_dictionaries({"document_id": DOC_IDS}),
    "ydoc:document:update": st.fixed_dictionaries(
        {"document_id": DOC_IDS, "update": UPDATES | UPDATES.map(list)},
        optional={"data": st.fixed_dictionaries({"content": VALUES})}),
    "ydoc:awareness:update": st.fixed_dictionaries(
        {"document_id": DOC_IDS, "update": st.binary(max_size=8) | VALUES}),
}


@st.composite
def mutated(draw, template) -> dict:
    """A valid payload, sometimes with one key changed, removed or added."""
    value = draw(template)
    if not isinstance(value, dict) or draw(st.integers(0, 2)) == 0:
        return value
    value = dict(value)
    action = draw(st.sampled_from(["change", "remove", "add"]))
    if action == "change" and value:
        value[draw(st.sampled_from(sorted(value)))] = draw(VALUES)
    elif action == "remove" and value:
        del value[draw(st.sampled_from(sorted(value)))]
    else:
        value[draw(st.sampled_from(fuzzlib.KEYS))] = draw(VALUES)
    return value


EVENT = st.one_of(
    # mostly a known event with a nearly valid payload
    st.sampled_from(fuzzlib.EVENTS).flatmap(
        lambda name: st.tuples(st.just(name), mutated(TEMPLATES[name]))
    ).map(list),
    # sometimes anything: any name, payloads built from the handlers' keys or not at all
    st.tuples(st.sampled_from(fuzzlib.EVENTS + ("unknown", "message", "x" * 80)),
              st.lists(payloads() | VALUES, max_size=2)).map(lambda t: [t[0], *t[1]]),
)


@pytest.fixture(scope="module")
def world():
    with fuzzlib.WorldRunner() as runner:
        yield runner


SETTINGS = settings(max_examples=250, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@SETTINGS
@given(EVENT, st.booleans())
@example(["join-note", {"note_id": "n3"}], True)
@example(["join-note", {"note_id": "n2", "auth": {"token": TOKENS[1]}}], True)
@example(["user-join", {"auth": {"token": TOKENS[2]}}], False)
@example(["user-join", {"auth": {"token": 5}}], True)
@example(["events:channel", {"channel_id": "c2", "data": {"type": "typing"}}], True)
@example(["events:channel", {"channel_id": "c1", "data": {"type": "x" * 65}}], True)
@example(["events:chat", {"chat_id": "x", "data": {"type": "other"}}], True)
@example(["usage", {"model": "m", "chat_id": ""}], True)
@example(["ydoc:document:join", {"document_id": "note:n3"}], True)
@example(["ydoc:document:join", {"document_id": "other:a"}], True)
@example(["ydoc:document:update", {"document_id": "note:n1", "update": [1, 2, 3],
                                   "data": {"content": {"a": 1}}}], True)
@example(["ydoc:document:update", {"document_id": "note:n2", "update": b"\x00\x00"}], True)
@example(["ydoc:document:update", {"document_id": "note:n1", "update": [1, True]}], True)
@example(["ydoc:document:update", {"document_id": "note:n1", "update": b"\x00\x00",
                                   "data": {"content": 2**70}}], True)
@example(["ydoc:awareness:update", {"document_id": "note:n1", "update": [256]}], True)
@example(["heartbeat", [1]], False)
def test_any_event(world, args, ack):
    if world.runs and world.runs % 120 == 0:
        world.restart()  # a fresh appliance now and then: joined rooms pile up
    world.run(fuzzlib.World.check_event, args, ack=ack)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(EVENT, min_size=2, max_size=6))
def test_event_sequences_from_two_users(world, events):
    """Interleaved events of alice and bob (who share a channel and a document)."""
    for i, args in enumerate(events):
        world.run(fuzzlib.World.check_event, args, user="bob" if i % 2 else "alice")
    world.restart()


def test_limits_refuse_without_side_effects(world):
    """The per-connection document and room limits refuse whole joins (all or none)."""
    world.restart()

    async def scenario(w: fuzzlib.World):
        codes = []
        for doc in ("scratch:1", "scratch:2", "scratch:3", "scratch:4", "scratch:5"):
            out = await w.check_event(["ydoc:document:join", {"document_id": doc}])
            codes.append(out.code)
        return codes

    codes = world.run(scenario)
    assert codes[:2] == [None, None] and "rate_limited" in codes
    world.restart()
