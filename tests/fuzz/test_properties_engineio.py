"""Engine.IO v4 decoding (rt.engine.protocol) under arbitrary input: only ProtocolError,
and what decodes is what was encoded."""
from __future__ import annotations

import base64

import fuzzlib
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rt.engine.protocol import (
    CLOSE,
    MESSAGE,
    NOOP,
    PING,
    PONG,
    SEPARATOR,
    UPGRADE,
    Packet,
    ProtocolError,
    decode_packet,
    decode_payload,
    encode_payload,
)

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# text a packet may carry: anything but the record separator and lone surrogates
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=SEPARATOR),
               max_size=40)
PACKET_BODY = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda t, s: (chr(48 + t) + s).encode(), st.integers(0, 9), TEXT),
    st.builds(lambda raw: b"b" + base64.b64encode(raw), st.binary(max_size=30)),
    st.sampled_from([b"b", b"b=", b"bA", b"bAQ", b"bAQ=", b"b!!", b"b A==", b"\x1e", b""]),
)


@FAST
@given(st.binary(max_size=200))
@example(b"")
@example(b"\x1e")
@example(b"4\xc3")
@example(b"b\xc3\xa9")
def test_arbitrary_bytes(data):
    fuzzlib.check_engineio(data)


@FAST
@given(st.lists(PACKET_BODY, min_size=1, max_size=6))
def test_payloads_of_packet_like_parts(parts):
    fuzzlib.check_engineio(SEPARATOR.encode().join(parts))


@FAST
@given(st.lists(st.one_of(
    st.tuples(st.sampled_from([MESSAGE, PING, PONG, NOOP, CLOSE, UPGRADE]), TEXT),
    st.tuples(st.just(MESSAGE), st.binary(max_size=30)),
), min_size=1, max_size=8))
def test_encode_then_decode_is_identity(packets):
    body = encode_payload([Packet(t, d) for t, d in packets]).encode()
    assert decode_payload(body) == [(t, d) for t, d in packets]


@FAST
@given(st.text(max_size=60))
def test_text_frames_decode_or_refuse(text):
    try:
        ptype, data = decode_packet(text)
    except ProtocolError:
        assert not text or text[0] not in "0123456" or text[0] == "b"
        return
    assert 0 <= ptype <= 6
    if text[0] == "b":
        assert ptype == MESSAGE and isinstance(data, bytes)
    else:
        assert data == text[1:]


@pytest.mark.parametrize("raw", [b"\x00", bytearray(b"\xff"), memoryview(b"abc")])
def test_binary_frames_are_messages(raw):
    assert decode_packet(raw) == (MESSAGE, bytes(raw))
