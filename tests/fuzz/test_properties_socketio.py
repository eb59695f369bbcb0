"""Socket.IO v5 packets: the strict decoder alone (only MalformedPacket; python-socketio
reads what it accepts the same way; attachments reconstruct), then whole polling bodies
into a live session of a real appliance (nothing logged at ERROR; a closed session leaves
no state behind)."""
from __future__ import annotations

import asyncio
import base64
import json

import fuzzlib
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.just({"_placeholder": True, "num": 0}),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["a", "_placeholder", "num", "x"]), inner, max_size=3),
    max_leaves=12)


@st.composite
def packets(draw) -> tuple[str, list[bytes]]:
    ptype = draw(st.sampled_from("0123456789"))
    text = ptype
    if ptype in "56" or draw(st.booleans()):
        text += draw(st.sampled_from(["", "1", "2", "10", "11", "0", "01", "x", "99"])) + "-"
    if draw(st.booleans()):
        text += draw(st.sampled_from(["/", "/admin", "/a?b=1", "/x/y"])) + draw(
            st.sampled_from([",", "", ",,"]))
    if draw(st.booleans()):
        text += draw(st.sampled_from(["0", "7", "12345678901234567890", "9" * 101, "1a"]))
    shape = draw(st.sampled_from(["event", "json", "raw", "none"]))
    if shape == "event":
        name = draw(st.sampled_from(["e", "connect", "message", "", "ydoc:document:update"]))
        text += json.dumps([name] + draw(st.lists(JSON, max_size=3)))
    elif shape == "json":
        text += json.dumps(draw(JSON))
    elif shape == "raw":
        text += draw(st.text(max_size=20))
    attachments = draw(st.lists(st.binary(max_size=8), max_size=3))
    return text, attachments


@FAST
@given(packets())
@example(("51-[\"x\",{\"_placeholder\":true,\"num\":0}]", [b"\x01"]))
@example(("51-[\"x\",{\"_placeholder\":false,\"num\":5}]", []))
@example(("51-[\"x\",{\"_placeholder\":1,\"num\":true}]", []))
@example(("2[\"x\"," + "[" * 600 + "]" * 600 + "]", []))
@example(("2/a?b,1[\"x\"]", []))
@example(("2[\"x\",NaN,{\"a\":[Infinity]}]", []))
def test_strict_decoder(packet):
    text, attachments = packet
    fuzzlib.check_socketio(text, attachments)


@FAST
@given(st.text(max_size=80), st.lists(st.binary(max_size=4), max_size=2))
def test_strict_decoder_arbitrary_text(text, attachments):
    fuzzlib.check_socketio(text, attachments)


@pytest.mark.parametrize("depth", [100, 300, 327, 328, 400, 900])
def test_deep_binary_packets_fail_only_as_malformed(depth):
    """Validation and python-socketio's reconstruction recurse alike: a binary packet that
    is too deep is refused before its attachment arrives, never half-way."""
    inner = '{"_placeholder":true,"num":0}'
    fuzzlib.check_socketio('51-["x",' + "[" * depth + inner + "]" * depth + "]", [b"\x01"])
    fuzzlib.check_socketio('51-["x",' + '{"a":' * depth + inner + "}" * depth + "]", [b"\x01"])


# ---------------------------------------------------------------------- live session
def _b64(raw: bytes) -> str:
    return "b" + base64.b64encode(raw).decode()


@st.composite
def bodies(draw) -> bytes:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["sio", "sio", "eio", "binary", "junk"]))
        if kind == "sio":
            text, _ = draw(packets())
            parts.append("4" + text)
        elif kind == "eio":
            parts.append(draw(st.sampled_from(["1", "2", "3", "5", "6", "0", "4", "7", ""])))
        elif kind == "binary":
            parts.append(_b64(draw(st.binary(max_size=8))))
        else:
            parts.append(draw(st.text(max_size=10)))
    body = "\x1e".join(parts).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 20)) == 0:
        body += b"\xff"
    return body


@pytest.fixture(scope="module")
def world():
    with fuzzlib.WorldRunner() as runner:
        yield runner


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bodies())
@example(b'451-["heartbeat",{"_placeholder":true,"num":0}]')  # attachment never comes
@example(b'451-["heartbeat",{"_placeholder":true,"num":0}]\x1e42["heartbeat"]')
@example(b'451-["heartbeat",{"_placeholder":true,"num":0}]\x1e' + _b64(b"x").encode())
@example(b"41")
@example(b"40")
@example(b"2")
@example(b"1")
@example(b'42["connect",{"token":"x"}]')
@example(b"4\xff")
def test_live_session(world, body):
    world.run(fuzzlib.World.check_post, body)


_SIGNER = fuzzlib.TokenVerifier(fuzzlib.SECRET)
CONNECT_AUTH = st.one_of(
    st.sampled_from([_SIGNER.issue(u, None) for u in ("alice", "bob", "root", "pat", "ghost")]
                    + list(fuzzlib.tokens())).map(lambda t: {"token": t}),
    st.dictionaries(st.sampled_from(["token", "x"]), JSON, max_size=2),
)


@st.composite
def first_bodies(draw) -> bytes:
    """What a new session may receive first: CONNECTs with any auth, to any namespace, and
    whatever else, then more packets."""
    connect = "40" + draw(st.sampled_from(["", "/", "/admin,", "/,"]))
    if draw(st.booleans()):
        connect += json.dumps(draw(CONNECT_AUTH))
    first = draw(st.sampled_from([connect, connect, connect]) | st.just("42[\"heartbeat\"]"))
    rest = draw(st.just(b"") | bodies())
    return first.encode() + (b"\x1e" + rest if rest else b"")


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(first_bodies())
@example(b'40{"token":"' + _SIGNER.issue("pat", None).encode() + b'"}')
@example(b'40{"token":"' + _SIGNER.issue("alice", None).encode() + b'"}\x1e40')
@example(b'40{"token":"' + _SIGNER.issue("alice", None).encode()
         + b'"}\x1e451-["heartbeat",{"_placeholder":true,"num":0}]')
@example(b"40/admin,{}")
def test_new_sessions_leave_nothing_behind(world, body):
    world.run(fuzzlib.World.check_fresh_post, body)


def test_nothing_is_handled_after_a_protocol_error(world):
    """The reference server drops what follows a packet it cannot parse (socket.io closes
    the client at once; engine.io ignores packets of a closed socket): the chat read marker
    after the malformed `4X` must not be written (found by fuzz_session)."""
    async def scenario(w: fuzzlib.World):
        conn = w.conns["alice"]
        body = (b'4X\x1e42["events:chat",{"chat_id":"after-close",'
                b'"data":{"type":"last_read_at"}}]')
        await w.post(conn, body)
        late = w.take_late_dispatches()
        rows = w._store_rows()["chat_reads"]
        w.conns["alice"] = await w.connect("alice")
        return late, rows

    late, rows = world.run(scenario)
    assert not late, late
    assert not [r for r in rows if r[0] == "after-close"], rows


def test_what_came_before_a_protocol_error_is_handled(world):
    """The reference server handles a payload's packets in order up to the bad one
    (engine.io-parser decodes until the error packet; engine.io then closes): the event
    before the client's PING (a protocol error in v4) is handled."""
    async def scenario(w: fuzzlib.World):
        conn = w.conns["alice"]
        await w.post(conn, b'42["events:chat",{"chat_id":"before-ping",'
                           b'"data":{"type":"last_read_at"}}]\x1e2')
        closed = conn.session.closed
        rows = w._store_rows()["chat_reads"]
        w.conns["alice"] = await w.connect("alice")
        return closed, rows

    closed, rows = world.run(scenario)
    assert closed
    assert [r for r in rows if r[0] == "before-ping"], rows


def test_nothing_is_handled_after_a_protocol_error_before_a_close(world):
    """`4X` (malformed) then an event then `1` (CLOSE): the CLOSE closes the session while
    the POST is read, so the protocol error found later finds it closed already; the event
    after `4X` must not be handled all the same (found by fuzz_session)."""
    async def scenario(w: fuzzlib.World):
        conn = w.conns["alice"]
        await w.post(conn, b'4X\x1e42["events:chat",{"chat_id":"after-close-2",'
                           b'"data":{"type":"last_read_at"}}]\x1e1')
        late = w.take_late_dispatches()
        rows = w._store_rows()["chat_reads"]
        w.conns["alice"] = await w.connect("alice")
        return late, rows

    late, rows = world.run(scenario)
    assert not late, late
    assert not [r for r in rows if r[0] == "after-close-2"], rows


async def _connect_then_lose_the_session(w: fuzzlib.World, how: str):
    """A valid CONNECT whose Engine.IO session goes away while the connect handler runs."""
    from engineio.base_server import BaseServer

    from rt.engine.protocol import HandshakeError

    before = w._census()
    session = await w.app.sio.engine.create_session(
        {"REMOTE_ADDR": "192.0.2.9", "rt.transport": "polling"}, "polling")
    connect = b"40" + json.dumps({"token": _SIGNER.issue("alice", None)}).encode()
    if how == "close packet":  # the client's CLOSE in the same POST
        try:
            session.handle_post(connect + b"\x1e1")
        except HandshakeError:
            pass
    else:  # the websocket closes while the user is looked up (what on_ws_closed does)
        session.handle_post(connect)
        for _ in range(2):
            await asyncio.sleep(0)
        session.close(BaseServer.reason.TRANSPORT_CLOSE, notify_client=False)
    await w._settle(session)
    errors = w.errors.take()
    after = w._census()
    return errors, {k: (before[k], after[k]) for k in before if before[k] != after[k]}


@pytest.mark.parametrize("how", ["close packet", "transport closed"])
def test_a_connect_cut_short_leaves_nothing_behind(world, how):
    """Found by fuzz_session: the session gone while the connect handler ran used to fail in
    save_session (an error logged) and leave the identity, limits entry and sid behind."""
    errors, changed = world.run(_connect_then_lose_the_session, how)
    assert not errors, errors
    assert not changed, changed
