"""Frames between the appliance and its document host (host.py): a JSON header and raw parts.

One frame is `u32 header length | header (JSON) | parts`, where the header's `sizes` lists the
length of each part: Yjs updates and states travel as bytes, never as JSON lists, so a 32 MB
state costs one copy each way. Both directions use the same frame; requests and answers pair
up in order (the host answers one request at a time).
"""
from __future__ import annotations

import struct
from typing import Any, BinaryIO

import orjson

_LEN = struct.Struct("<I")
PREFIX_BYTES = _LEN.size
HEADER_MAX = 16 * 1024 * 1024  # a header is a state vector or a list of pairs at most


class WireError(Exception):
    """A frame that cannot be read: the other side is gone or is not the document host."""


def frame(header: dict[str, Any], parts: list[bytes]) -> list[bytes]:
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
