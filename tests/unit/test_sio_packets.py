"""backends/sio_packets.py: events encoded by orjson mean what python-socketio's Packet
encodes, and whatever orjson cannot write as the json module would goes to Packet."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from socketio import packet as sio_packet

from rt.backends.sio_packets import dumps_plain, encode_event


def stock(data, namespace="/", id=None):
    return sio_packet.Packet(sio_packet.EVENT, namespace=namespace, data=data, id=id).encode()


@pytest.mark.parametrize("data, namespace, id", [
    (["events", {"chat_id": "c1", "data": {"type": "chat:message:delta",
                                           "data": {"content": "Grüße, 世界 👋"}}}], "/", None),
    (["heartbeat"], "/", None),
    (["ev", 1, 2.5, None, True, [], {}], "/", 12),
    (["ev", {"k": "v"}], "/admin", None),
    (["ev", {"k": "v"}], "/admin", 3),
    (["ev", "line\nbreak \"quoted\" \\ back"], "/", None),
])
def test_plain_events_mean_the_same_as_python_socketios(data, namespace, id) -> None:
    mine, theirs = encode_event(data, namespace, id), stock(data, namespace, id)
    assert isinstance(mine, str)
    head = len(theirs) - len(json.dumps(data, separators=(",", ":")))
    assert mine[:head] == theirs[:head]  # type, namespace, ack id
    assert json.loads(mine[head:]) == json.loads(theirs[head:]) == data


def test_text_is_utf8_not_escaped() -> None:
    assert encode_event(["ev", "é"]) == '2["ev","é"]'
    assert stock(["ev", "é"]) == '2["ev","\\u00e9"]'


def test_nan_is_null_where_the_json_module_writes_what_no_client_parses() -> None:
    assert encode_event(["ev", float("nan"), float("inf")]) == '2["ev",null,null]'


@dataclass
class Point:
    x: int


@pytest.mark.parametrize("data", [
    ["ev", b"\x00\x01"],                 # binary: attachments
    ["ev", {"nested": [b"blob"]}],
    ["ev", {1: "non-str key"}],          # json turns it into "1"
    ["ev", 2 ** 70],                     # beyond 64 bits
    ["ev", "\ud800"],                    # a lone surrogate
])
def test_what_orjson_would_write_otherwise_takes_python_socketios_path(data) -> None:
    assert dumps_plain(data) is None
    assert encode_event(data, "/", 4) == stock(data, "/", 4)


def test_binary_gives_the_packet_and_its_attachments() -> None:
    encoded = encode_event(["ev", b"xy"])
    assert isinstance(encoded, list)
    assert encoded[0].startswith("51-") and encoded[1:] == [b"xy"]


def test_dataclasses_are_not_taken_by_orjson() -> None:
    assert dumps_plain(["ev", Point(1)]) is None
