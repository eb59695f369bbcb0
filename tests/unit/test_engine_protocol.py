"""Wire-format units: Engine.IO v4 packets and payloads (rt.engine.protocol) and the strict
Socket.IO v5 decoder (rt.sio.decode_packet). The transports are covered end to end by
tests/integration/test_engineio_conformance.py and test_socketio_conformance.py."""
from __future__ import annotations

import json

import pytest

from rt.engine.protocol import (
    MESSAGE,
    NOOP,
    PING,
    PONG,
    Packet,
    ProtocolError,
    decode_packet,
    decode_payload,
    encode_payload,
    wire,
    wire_text,
)
from rt.sio import MalformedPacket
from rt.sio import decode_packet as decode_sio


# ---------------------------------------------------------------------------- Engine.IO
@pytest.mark.parametrize("raw,expected", [
    ("4hello", (MESSAGE, "hello")),
    ("4", (MESSAGE, "")),
    ("2", (PING, "")),
    ("3probe", (PONG, "probe")),
    ("6", (NOOP, "")),
    ("bAQIDBA==", (MESSAGE, b"\x01\x02\x03\x04")),
    ("b", (MESSAGE, b"")),
    (b"\x01\x02", (MESSAGE, b"\x01\x02")),
    (bytearray(b"\x00"), (MESSAGE, b"\x00")),
])
def test_decode_engine_packet(raw, expected):
    assert decode_packet(raw) == expected


@pytest.mark.parametrize("raw", ["", "7", "abc", "/", "b!!", "bAQ"])
def test_decode_engine_packet_refuses(raw):
    with pytest.raises(ProtocolError):
        decode_packet(raw)


def test_decode_payload():
    assert decode_payload(b"4a\x1e4b\x1ebAQ==\x1e3") == [
        (MESSAGE, "a"), (MESSAGE, "b"), (MESSAGE, b"\x01"), (PONG, "")]
    assert decode_payload("4h\u00e9".encode()) == [(MESSAGE, "h\u00e9")]
    for bad in (b"", b"4a\x1e", b"\x1e4a", b"\xff", b"4a\x1e\x1e4b"):
        with pytest.raises(ProtocolError):
            decode_payload(bad)


def test_wire_and_payload():
    text, blob = Packet(MESSAGE, "hi"), Packet(MESSAGE, b"\x01\x02\x03\x04")
    assert wire(text) == "4hi"
    assert wire(blob) == b"\x01\x02\x03\x04"  # a websocket binary frame
    assert wire_text(blob) == "bAQIDBA=="  # polling
    # the same packet object keeps giving each transport its own form (broadcasts)
    assert wire(blob) == b"\x01\x02\x03\x04"
    assert encode_payload([text, blob, Packet(PING)]) == "4hi\x1ebAQIDBA==\x1e2"


# ---------------------------------------------------------------------------- Socket.IO
def sio(text):
    pkt = decode_sio(text, json.loads)
    return pkt.type, pkt.namespace, pkt.id, pkt.data, pkt.attachments


@pytest.mark.parametrize("text,expected", [
    ("0", (0, "/", None, None, 0)),
    ('0{"token":"t"}', (0, "/", None, {"token": "t"}, 0)),
    ("0/admin,", (0, "/admin", None, None, 0)),
    ("0/admin", (0, "/admin", None, None, 0)),
    ('0/admin,{"a":1}', (0, "/admin", None, {"a": 1}, 0)),
    ("1", (1, "/", None, None, 0)),
    ("1/admin,", (1, "/admin", None, None, 0)),
    ('2["ev"]', (2, "/", None, ["ev"], 0)),
    ('2["ev",1,{"a":[true]}]', (2, "/", None, ["ev", 1, {"a": [True]}], 0)),
    ('212["ev"]', (2, "/", 12, ["ev"], 0)),
    ('2/admin,7["ev"]', (2, "/admin", 7, ["ev"], 0)),
    ("3456[]", (3, "/", 456, [], 0)),
    ('31[1,"2"]', (3, "/", 1, [1, "2"], 0)),
    ('51-["ev",{"_placeholder":true,"num":0}]',
     (5, "/", None, ["ev", {"_placeholder": True, "num": 0}], 1)),
    ('510-9["ev"' + ',{"_placeholder":true,"num":9}]',
     (5, "/", 9, ["ev", {"_placeholder": True, "num": 9}], 10)),
    ('62-/admin,3[{"_placeholder":true,"num":1}]',
     (6, "/admin", 3, [{"_placeholder": True, "num": 1}], 2)),
])
def test_decode_socketio_packet(text, expected):
    assert sio(text) == expected


@pytest.mark.parametrize("text", [
    "", "7", "a", " 2[\"ev\"]",
    "0[]", '0"tok"', "0null",
    '1{"a":1}', "1[]",
    "2", "2{}", "2[]", "2[1]", '2[null]', '2abc["ev"]', '2["ev"', '2["ev"]x',
    '2["connect"]', '2["disconnect"]', '2["connect_error",{}]', '2["disconnecting"]',
    '2["newListener"]', '2["removeListener"]',
    "3", '3{"a":1}', '3["no id"]',
    '4{"message":"x"}', "4",
    '5["ev"]', '5-["ev"]', '50-["ev"]', '511-["ev"]', '5a-["ev"]', "51-", '51-{}',
    '51-["ev",{"_placeholder":true,"num":1}]', '51-["ev",{"_placeholder":true,"num":-1}]',
    '51-["ev",{"_placeholder":true,"num":"0"}]', '51-["ev",{"_placeholder":true}]',
    '51-["ev",{"_placeholder":true,"num":true}]', '51-["ev",{"_placeholder":true,"num":0.0}]',
    "61-", '61-{"a":1}', '61-["x"]',
    '21-["ev"]',  # attachments on a non-binary packet
    "2" + "1" * 101 + '["ev"]',  # absurd ack id
])
def test_decode_socketio_packet_refuses(text):
    with pytest.raises(MalformedPacket):
        decode_sio(text, json.loads)


def test_decode_socketio_packet_nested_too_deeply():
    deep = 200_000
    with pytest.raises(MalformedPacket):
        decode_sio('2["ev",' + "[" * deep + "]" * deep + "]", json.loads)
    nested = 2_000
    with pytest.raises(MalformedPacket):
        decode_sio('51-["ev",' + "[" * nested + '{"_placeholder":true,"num":0}'
                   + "]" * nested + "]", json.loads)


def test_decode_socketio_placeholder_false_is_data():
    assert sio('2["ev",{"_placeholder":false,"num":5}]')[3] == [
        "ev", {"_placeholder": False, "num": 5}]
