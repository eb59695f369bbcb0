"""The incremental SSE parser (rt/sse.py): the standard's rules, limits, and that any
chunking of a byte stream gives the same events as reading it whole."""
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rt.sse import SSEError, SSEEvent, SSEParser


def parse(data: bytes, sizes=None, **kw) -> list[SSEEvent]:
    """Feed `data` in pieces of the given sizes (cycled), then finish."""
    parser = SSEParser(**kw)
    events: list[SSEEvent] = []
    if sizes is None:
        events += parser.feed(data)
    else:
        pos, i = 0, 0
        while pos < len(data):
            n = sizes[i % len(sizes)]
            events += parser.feed(data[pos:pos + n])
            pos += n
            i += 1
    return events + parser.finish()


def reference(data: bytes) -> list[SSEEvent]:
    """The same rules written the obvious way, on the whole stream at once."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)[:-1]  # the last piece is unterminated
    events, buf, kind, last_id, retry, pending = [], [], "", None, None, False

    def dispatch():
        nonlocal buf, kind, pending
        if buf:
            events.append(SSEEvent("\n".join(buf), kind or "message", last_id, retry))
        buf, kind, pending = [], "", False

    for line in lines:
        if line == "":
            dispatch()
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        pending = True
        if name == "data":
            buf.append(value)
        elif name == "event":
            kind = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
    if pending:
        dispatch()
    return events


# ---------------------------------------------------------------------- the rules
def test_openai_stream_with_done():
    body = (b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
            b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
            b"data: [DONE]\n\n")
    events = parse(body)
    assert [e.data for e in events] == ['{"choices":[{"delta":{"content":"Hel"}}]}',
                                        '{"choices":[{"delta":{"content":"lo"}}]}', "[DONE]"]
    assert [e.is_done for e in events] == [False, False, True]
    assert all(e.event == "message" for e in events)


def test_multiline_data_comments_and_fields():
    body = (b": keep-alive\n\n"
            b"event: error\nid: 7\nretry: 1500\ndata: {\"a\":\ndata:  1}\n\n"
            b":another comment\n"
            b"data\n\n"  # a field with no colon: data with an empty value
            b"event: nothing\n\n"  # no data: not dispatched
            b"id: bad\0id\nretry: 12x\ndata:x\n\n")
    parser = SSEParser()
    events = parser.feed(body) + parser.finish()
    assert events == [SSEEvent('{"a":\n 1}', "error", "7", 1500),
                      SSEEvent("", "message", "7", 1500),
                      SSEEvent("x", "message", "7", 1500)]
    assert parser.comments == 2


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol):
    body = eol.join([b"data: a", b"data: b", b"", b": c", b"data: d", b"", b""])
    assert [e.data for e in parse(body)] == ["a\nb", "d"]
    assert [e.data for e in parse(body, sizes=[1])] == ["a\nb", "d"]


def test_crlf_split_across_reads_is_one_line_end():
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # the LF of the CRLF, not a blank line
    assert parser.feed(b"\r") == [SSEEvent("a")]  # now the blank line
    assert parser.feed(b"\ndata: b\r\n\r\n") == [SSEEvent("b")]


def test_bom_and_utf8_split_anywhere():
    text = "data: héllo wörld 🌍 ✓\n\n"
    body = b"\xef\xbb\xbf" + text.encode()
    for size in range(1, 6):
        assert parse(body, sizes=[size]) == [SSEEvent("héllo wörld 🌍 ✓")]
    # only one leading BOM is dropped; a second one is content
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []  # "\ufeffdata" is no field
    assert parse("data: \ufeffx\n\n".encode()) == [SSEEvent("\ufeffx")]


def test_invalid_utf8_is_replaced_not_fatal():
    assert parse(b"data: a\xff\xfeb\n\n", sizes=[1]) == [SSEEvent("a\ufffd\ufffdb")]


def test_end_of_stream():
    # a complete last event that misses its blank line is still given (lenient)
    assert parse(b"data: x\n\ndata: [DONE]\n") == [SSEEvent("x"), SSEEvent("[DONE]")]
    # an unfinished line is dropped, as the standard says
    assert parse(b"data: x\n\ndata: {\"trunc") == [SSEEvent("x")]


def test_limits():
    with pytest.raises(SSEError):
        parse(b"data: " + b"x" * 100 + b"\n\n", max_line=50)
    with pytest.raises(SSEError):  # also when the line never ends
        parse(b"data: " + b"x" * 100, sizes=[7], max_line=50)
    with pytest.raises(SSEError):
        parse(b"data: 0123456789\n" * 10 + b"\n", max_event=50)
    # at the limits it works
    assert parse(b"data: " + b"x" * 44 + b"\n\n", max_line=50) == [SSEEvent("x" * 44)]


def test_many_small_events_in_one_read():
    body = b"".join(b"data: %d\n\n" % i for i in range(1000))
    assert [e.data for e in parse(body)] == [str(i) for i in range(1000)]


# ---------------------------------------------------------------------- any chunking
EOLS = st.sampled_from(["\n", "\r", "\r\n"])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                      blacklist_characters="\r\n"), max_size=12)
LINE = st.one_of(
    st.builds(lambda t: "data:" + t, TEXT),
    st.builds(lambda t: "data: " + t, TEXT),
    st.just("data"),
    st.builds(lambda t: ": " + t, TEXT),  # comment / keep-alive
    st.builds(lambda t: "event: " + t, TEXT),
    st.builds(lambda t: "id: " + t, TEXT),
    st.builds(lambda n: f"retry: {n}", st.integers(0, 10**6)),
    st.just(""),
    st.just("data: [DONE]"),
    TEXT,  # a field without a colon, or anything
)


@st.composite
def streams(draw) -> bytes:
    lines = draw(st.lists(st.tuples(LINE, EOLS), max_size=25))
    text = "".join(line + eol for line, eol in lines)
    if draw(st.booleans()):
        text += draw(TEXT)  # an unterminated tail
    body = text.encode()
    if draw(st.booleans()):
        body = b"\xef\xbb\xbf" + body
    return body


@st.composite
def chunkings(draw, body: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=30)))
    pieces, last = [], 0
    for cut in cuts + [len(body)]:
        pieces.append(body[last:cut])  # empty pieces included: feed(b"") must be harmless
        last = cut
    return pieces


def feed_pieces(pieces: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_chunking_gives_the_same_events(data):
    body = data.draw(streams())
    pieces = data.draw(chunkings(body))
    whole = parse(body)
    assert feed_pieces(pieces) == whole
    assert whole == reference(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_arbitrary_bytes_never_crash_and_chunking_does_not_matter(body, data):
    pieces = data.draw(chunkings(body))
    assert feed_pieces(pieces) == parse(body) == reference(body)
