"""Frames between the appliance and its document host (rt/documents/wire.py): whatever way
the input is cut, the reader gives back exactly the frames written; a broken frame is an
error, never a wrong answer."""
from __future__ import annotations

import io
import random

import pytest

from rt.documents.wire import FrameReader, WireError, frame, read_frame, write_frame

FRAMES = [
    ({"op": "load", "id": "note:a"}, [b"\x01\x02", b"", bytes(range(256)) * 300]),
    ({"sv": {"1": 2}, "pairs": {}}, []),
    ({"ok": True}, [b"x"]),
]


def stream() -> bytes:
    return b"".join(bytes(piece) for header, parts in FRAMES for piece in frame(header, parts))


@pytest.mark.parametrize("seed", range(20))
def test_any_cut_of_the_input_gives_the_frames_written(seed):
    data, rnd, reader, got = stream(), random.Random(seed), FrameReader(), []
    at = 0
    while at < len(data):
        step = rnd.choice([1, 2, 3, 7, 100, 4096, 70_000])
        got += reader.feed(data[at:at + step])
        at += step
    assert [(h, [bytes(p) for p in parts]) for h, parts in got] == FRAMES


def test_the_blocking_reader_reads_what_the_writer_wrote():
    out = io.BytesIO()
    for header, parts in FRAMES:
        write_frame(out, header, parts)
    source = io.BytesIO(out.getvalue())
    assert [read_frame(source) for _ in FRAMES] == FRAMES
    assert read_frame(source) is None  # a clean end


@pytest.mark.parametrize("broken", [
    b"\x05\x00\x00\x00{not}",                 # a header that is not JSON
    b"\x02\x00\x00\x00{}",                    # a header without sizes
    b"\x0e\x00\x00\x00{\"sizes\":[-1]}",      # a negative size
    b"\xff\xff\xff\x7f",                      # a header longer than any header
])
def test_a_broken_frame_is_an_error(broken):
    with pytest.raises(WireError):
        FrameReader().feed(broken)
    with pytest.raises(WireError):
        read_frame(io.BytesIO(broken))


def test_a_frame_cut_short_is_an_error_for_the_blocking_reader():
    data = stream()
    with pytest.raises(WireError):
        read_frame(io.BytesIO(data[:50]))
