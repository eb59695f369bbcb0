"""The Server-Sent Events parser (rt.sse.SSEParser): only SSEError; any chunking of a
stream gives the events of the whole stream, which are those of an independent reference
reading of the WHATWG rules; with limits, every chunking agrees on whether SSEError ends
the stream and what came before it."""
from __future__ import annotations

import fuzzlib
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rt.sse import SSEParser

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

PIECES = st.sampled_from([
    b"data:", b"data: ", b"event:", b"event: x", b"id:", b"id: 1", b"id: a\x00b", b"retry:",
    b"retry: 10", b"retry: 1x", b":", b": ping", b"\n", b"\r", b"\r\n", b"\n\n", b"[DONE]",
    b"\xef\xbb\xbf", b"\xf0\x9f\x98", b"\x80", b"\xff", b"x", b"hello", b" ", b"data",
    "\u00e9".encode(), b'{"choices":[]}',
])
STREAMS = st.one_of(
    st.lists(PIECES, max_size=30).map(b"".join),
    st.binary(max_size=120),
)


@FAST
@given(STREAMS, st.lists(st.integers(0, 200), max_size=8))
@example(b"\xef\xbb\xbfdata: a\r\n\r\n", [1, 2, 3])
@example(b"data: a\r\ndata: b\r", [9])
@example(b"data: \xf0\x9f\x98\x80\n\n", [7, 8])
@example(b"data: x\n", [])
@example(b"data: x", [])
@example(b"\xef\xbb", [1])
def test_any_chunking_gives_the_whole_streams_events(stream, cuts):
    fuzzlib.check_sse(stream, cuts)


@FAST
@given(STREAMS, st.lists(st.integers(0, 200), max_size=8), st.integers(1, 12),
       st.integers(1, 24))
@example(b"data: 12345\n\n", [3], 4, 100)
@example(b"data: 12345\r", [7], 100, 3)
@example(b"abcde", [2], 4, 100)
def test_limits_hold_the_same_for_every_chunking(stream, cuts, max_line, max_event):
    fuzzlib.check_sse(stream, cuts, max_line, max_event)


@FAST
@given(STREAMS)
def test_feeding_after_finish_is_harmless(stream):
    """The relay may call finish() once more on an error path: nothing new comes out."""
    parser = SSEParser()
    parser.feed(stream)
    parser.finish()
    assert parser.finish() == []
