"""The front door's reading of a request head (rt/engine/front_door.py) under arbitrary
input: it never raises, and whatever it adopts is a well-formed websocket handshake for the
engine's path; everything else is left to Tornado."""
from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rt.engine.front_door import FrontDoor
from rt.engine.server import EngineServer
from rt.engine.websocket import valid_key

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

PATH = "/ws/socket.io"
GOOD = (f"GET {PATH}/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(b'0123456789abcdef').decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def door() -> FrontDoor:
    return FrontDoor(EngineServer(), PATH, lambda peer: peer == "127.0.0.1",
                     header_timeout=60.0)


def check(data: bytes) -> None:
    plan = door().plan(data, "127.0.0.1")
    if plan is None:
        return
    size, key, environ = plan
    head = data[:size]
    assert head.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in head[:-4]
    assert head.startswith(b"GET " + PATH.encode())
    assert valid_key(key)
    assert environ["PATH_INFO"] in (PATH, PATH + "/")
    assert environ["rt.transport"] == "websocket"


def test_the_good_head_is_adopted():
    assert door().plan(GOOD, "127.0.0.1") is not None


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data):
    check(data)


@FAST
@given(st.integers(0, len(GOOD) - 1), st.binary(min_size=0, max_size=8),
       st.integers(0, 8))
def test_mutated_handshakes(at, insert, drop):
    check(GOOD[:at] + insert + GOOD[at + drop:])


@FAST
@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=8))
def test_extra_headers(headers):
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    check(GOOD[:-2] + extra.encode("utf-8", "surrogatepass") + b"\r\n")
