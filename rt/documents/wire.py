"""Frames between the appliance and its document host (host.py): a JSON header and raw parts.

One frame is `u32 header length | header (JSON) | parts`, where the header's `sizes` lists the
length of each part: Yjs updates and states travel as bytes, never as JSON lists. Both
directions use the same frame; requests and answers pair up in order (the host answers one
request at a time). The appliance reads answers with `FrameReader`, which copies each piece
of input once, onto the end of its part: a 32 MB state arrives as many small copies
between other work on the event loop, never as one long one. (Not into a part allocated
at its final size: zeroing 32 MB at once held the loop 36 ms; a growing bytearray is
moved by the allocator's remapping, without a copy.)
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

import orjson

_LEN = struct.Struct("<I")
PREFIX_BYTES = _LEN.size
HEADER_MAX = 16 * 1024 * 1024  # a header is a state vector or a list of pairs at most


class WireError(Exception):
    """A frame that cannot be read: the other side is gone or is not the document host."""


def frame(header: dict[str, Any], parts: Sequence[bytes | bytearray]) -> list[bytes | bytearray]:
    """The frame as pieces to write in order (no copy of the parts)."""
    head = orjson.dumps({**header, "sizes": [len(part) for part in parts]})
    return [_LEN.pack(len(head)), head, *parts]


def read_header(head: bytes) -> tuple[dict[str, Any], list[int]]:
    """The header of a frame from its JSON, and the sizes of the parts that follow."""
    try:
        header = orjson.loads(head)
        sizes = header.pop("sizes")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise WireError(f"an unreadable frame header: {exc}") from None
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise WireError("an unreadable frame header: bad sizes")
    return header, sizes


def header_length(prefix: bytes) -> int:
    """The header length a frame's prefix announces."""
    if len(prefix) != PREFIX_BYTES:
        raise WireError("a frame ended early")
    (length,) = _LEN.unpack(prefix)
    if length > HEADER_MAX:
        raise WireError(f"a frame header of {length} bytes")
    return int(length)


class FrameReader:
    """Frames from input given piece by piece (the event loop's side)."""

    def __init__(self) -> None:
        self._head = bytearray()  # the length prefix, then the header, being gathered
        self._header_length: int | None = None
        self._header: dict[str, Any] = {}
        self._sizes: list[int] = []
        self._parts: list[bytearray] = []
        self._part: bytearray | None = None  # the part being filled
        self._size = 0  # ... up to this size

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], list[bytearray]]]:
        """The frames this input completes. Raises WireError."""
        done: list[tuple[dict[str, Any], list[bytearray]]] = []
        view = memoryview(data)
        while view:
            if self._part is not None:
                take = min(len(view), self._size - len(self._part))
                self._part += view[:take]
                view = view[take:]
                if len(self._part) == self._size:
                    self._parts.append(self._part)
                    self._next_part(done)
                continue
            need = PREFIX_BYTES if self._header_length is None else self._header_length
            take = min(len(view), need - len(self._head))
            self._head += view[:take]
            view = view[take:]
            if len(self._head) < need:
                continue
            if self._header_length is None:
                self._header_length = header_length(bytes(self._head))
            else:
                self._header, self._sizes = read_header(bytes(self._head))
                self._header_length, self._parts = None, []
                self._next_part(done)
            self._head.clear()
        return done

    def _next_part(self, done: list[tuple[dict[str, Any], list[bytearray]]]) -> None:
        while len(self._parts) < len(self._sizes) and self._sizes[len(self._parts)] == 0:
            self._parts.append(bytearray())
        if len(self._parts) < len(self._sizes):
            self._part, self._size = bytearray(), self._sizes[len(self._parts)]
        else:
            self._part = None
            done.append((self._header, self._parts))


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], list[bytes]] | None:
    """A frame from a blocking stream (the host's side); None at a clean end of input."""
    prefix = stream.read(PREFIX_BYTES)
    if not prefix:
        return None
    header, sizes = read_header(_read_exactly(stream, header_length(prefix)))
    return header, [_read_exactly(stream, size) for size in sizes]


def write_frame(stream: BinaryIO, header: dict[str, Any], parts: list[bytes]) -> None:
    for piece in frame(header, parts):
        stream.write(piece)
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise WireError("a frame ended early")
    return data
