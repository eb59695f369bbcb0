"""The Yjs v1 update grammar, read in pure Python with bounds (step 1 of accepting an
update; see documents/service.py for the other three).

Every count and length must fit in the bytes that follow, nesting of `Any` values is
bounded (pycrdt overflows its stack on ~100,000 nested arrays: a segfault), only content
kinds that npm `yjs` can read are allowed, and the bytes must be used up exactly (pycrdt
ignores trailing garbage; so would the other clients). `missing_dependencies` says what an
update builds on that a document lacks, `splits_pair` whether it cuts a UTF-16 surrogate
pair in two. Nothing here knows about sockets, stores or pycrdt.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_SAFE = 2**53 - 1  # lib0 refuses larger integers
MAX_CLOCK = 2**32 - 1  # Yrs keeps clocks in 32 bits
MAX_DEPTH = 64  # nesting of Any values and JSON in an update (Yrs's JSON stops at 128)
EMPTY_UPDATE = b"\x00\x00"  # what y-py sends for a transaction that changed nothing


class InvalidUpdate(ValueError):
    """The bytes are not an acceptable Yjs v1 update."""


@dataclass
class UpdateShape:
    """What an update builds on and what it adds, per client id."""

    # client → (first clock, end of its last struct that is not a Skip, Skip ranges that
    # have structs after them: those must be known already)
    structs: dict[int, tuple[int, int | None, list[tuple[int, int]]]] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)  # client → highest referenced clock + 1
    deletes: dict[int, int] = field(default_factory=dict)  # client → end of the last deleted range
    # Clocks between the two halves of a surrogate pair in the update's strings, and the
    # clocks at which the update cuts existing content (origins, deleted ranges). Yrs keeps
    # strings in UTF-8 and mangles a pair cut in two (text lost, states npm yjs misreads),
    # where Yjs replaces the halves with U+FFFD: such a cut is refused.
    pairs: dict[int, set[int]] = field(default_factory=dict)
    cuts: list[tuple[int, int]] = field(default_factory=list)


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.end = len(data)

    def u8(self) -> int:
        if self.pos >= self.end:
            raise InvalidUpdate("unexpected end of update")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def var_uint(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        num = shift = 0
        while True:
            if pos >= end:
                raise InvalidUpdate("unexpected end of update")
            byte = data[pos]
            pos += 1
            num |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 56:
                raise InvalidUpdate("integer out of range")
        if num > MAX_SAFE:
            raise InvalidUpdate("integer out of range")
        self.pos = pos
        return num

    def var_int(self) -> None:
        first = self.u8()
        if first & 0x80:
            shift = 6
            while True:
                byte = self.u8()
                shift += 7
                if byte < 0x80:
                    break
                if shift > 53:
                    raise InvalidUpdate("integer out of range")

    def skip(self, count: int) -> None:
        if self.end - self.pos < count:
            raise InvalidUpdate("unexpected end of update")
        self.pos += count

    def buf(self) -> bytes:
        size = self.var_uint()
        if self.end - self.pos < size:
            raise InvalidUpdate("unexpected end of update")
        start = self.pos
        self.pos += size
        return self.data[start:self.pos]

    def string(self) -> str:
        try:
            return self.buf().decode("utf-8")  # strict, as lib0's fatal TextDecoder
        except UnicodeDecodeError:
            raise InvalidUpdate("string is not valid UTF-8") from None

    def json(self) -> None:
        text = self.string()
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise InvalidUpdate("embedded JSON is not valid") from None
        if _depth_over(value, MAX_DEPTH):
            raise InvalidUpdate("embedded JSON is nested too deeply")

    def any(self, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise InvalidUpdate("value nested too deeply")
        kind = self.u8()
        if kind in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if kind == 125:
            self.var_int()
        elif kind == 124:
            self.skip(4)
        elif kind in (123, 122):
            self.skip(8)
        elif kind == 119:
            self.string()
        elif kind == 118:
            for _ in range(self.var_uint()):
                self.string()
                self.any(depth + 1)
        elif kind == 117:
            for _ in range(self.var_uint()):
                self.any(depth + 1)
        elif kind == 116:
            self.buf()
        else:
            raise InvalidUpdate(f"unknown value type {kind}")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth_over(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _id(reader: _Reader, shape: UpdateShape, client: int, clock: int, cut: int | None) -> None:
    """An ID an item refers to: origin (cuts after it: `cut` 1), right origin (cuts before
    it: 0) or parent (None)."""
    ref_client, ref_clock = reader.var_uint(), reader.var_uint()
    if ref_clock > MAX_CLOCK:
        raise InvalidUpdate("clock out of range")
    if cut is not None:
        shape.cuts.append((ref_client, ref_clock + cut))
    if ref_client == client:
        if ref_clock >= clock:  # an item can only refer to what existed before it
            raise InvalidUpdate("an item refers to a later item of its own client")
    elif ref_clock + 1 > shape.refs.get(ref_client, 0):
        shape.refs[ref_client] = ref_clock + 1


def _content(reader: _Reader, ref: int, shape: UpdateShape, client: int, clock: int) -> int:
    """Read an item's content; returns its length in clock units."""
    if ref == 1:  # deleted
        length = reader.var_uint()
    elif ref == 3:  # binary
        reader.buf()
        length = 1
    elif ref == 4:  # string: its length counts UTF-16 code units, as in JavaScript
        text = reader.string()
        length = len(text.encode("utf-16-le")) // 2
        if length != len(text):  # astral characters: note where their pairs sit
            pairs = shape.pairs.setdefault(client, set())
            offset = clock
            for char in text:
                if ord(char) > 0xFFFF:
                    pairs.add(offset + 1)
                    offset += 2
                else:
                    offset += 1
    elif ref == 5:  # embed
        reader.json()
        length = 1
    elif ref == 6:  # format
        reader.string()
        reader.json()
        length = 1
    elif ref == 7:  # type
        type_ref = reader.var_uint()
        if type_ref in (3, 5):  # XmlElement, XmlHook: a name follows
            reader.string()
        elif type_ref not in (0, 1, 2, 4, 6):
            raise InvalidUpdate(f"unknown type reference {type_ref}")
        length = 1
    elif ref == 8:  # any
        length = reader.var_uint()
        for _ in range(length):
            reader.any()
    elif ref == 9:  # sub-document
        reader.string()
        reader.any()
        length = 1
    else:  # 2 = legacy JSON (Yjs 13 never writes it; Yrs reads it differently), 11..31
        raise InvalidUpdate(f"unsupported content type {ref}")
    if length < 1:
        raise InvalidUpdate("empty item")
    return length


def inspect_update(data: bytes) -> UpdateShape:
    """Check `data` against the Yjs v1 update format; raise InvalidUpdate when it is not
    exactly one well-formed, non-empty update."""
    reader = _Reader(data)
    shape = UpdateShape()
    for _ in range(reader.var_uint()):
        count, client, clock = reader.var_uint(), reader.var_uint(), reader.var_uint()
        if client in shape.structs:
            raise InvalidUpdate("a client appears twice")
        if count < 1:
            raise InvalidUpdate("a client without structs")
        start, end, skips, last_skip = clock, None, [], False
        for _ in range(count):
            info = reader.u8()
            ref = info & 0x1F
            if ref in (0, 10):  # GC or Skip: a length only
                length = reader.var_uint()
                if length < 1:
                    raise InvalidUpdate("empty struct")
                last_skip = ref == 10
                if last_skip:
                    skips.append((clock, clock + length))
                else:
                    end = clock + length
            else:
                if info & 0x80:
                    _id(reader, shape, client, clock, 1)  # origin
                if info & 0x40:
                    _id(reader, shape, client, clock, 0)  # right origin
                if not info & 0xC0:  # no origin: the parent is written
                    parent_info = reader.var_uint()
                    if parent_info == 1:
                        reader.string()  # a root type by name
                    elif parent_info == 0:
                        _id(reader, shape, client, clock, None)
                    else:
                        raise InvalidUpdate("bad parent info")
                    if info & 0x20:
                        reader.string()  # key in a map
                length = _content(reader, ref, shape, client, clock)
                last_skip = False
                end = clock + length
            clock += length
            if clock > MAX_CLOCK:
                raise InvalidUpdate("clock out of range")
        if last_skip:
            skips.pop()  # nothing follows it: no need to know what it skips
        shape.structs[client] = (start, end, skips)
    for _ in range(reader.var_uint()):
        client = reader.var_uint()
        for _ in range(reader.var_uint()):
            clock, length = reader.var_uint(), reader.var_uint()
            if length < 1 or clock + length > MAX_CLOCK + 1:
                raise InvalidUpdate("bad deleted range")
            if clock + length > shape.deletes.get(client, 0):
                shape.deletes[client] = clock + length
            shape.cuts += ((client, clock), (client, clock + length))
    if reader.pos != reader.end:
        raise InvalidUpdate("trailing bytes after the update")
    if not shape.deletes and all(end is None for _, end, _ in shape.structs.values()):
        raise InvalidUpdate("empty update")
    return shape


def decode_state_vector(data: bytes) -> dict[int, int]:
    reader = _Reader(data)
    return {reader.var_uint(): reader.var_uint() for _ in range(reader.var_uint())}


def missing_dependencies(shape: UpdateShape, sv: dict[int, int]) -> str | None:
    """Why the update cannot integrate fully into a document with state vector `sv`
    (None when it can)."""
    known = dict(sv)
    for client, (start, end, skips) in shape.structs.items():
        have = sv.get(client, 0)
        if end is None:
            continue
        if start > have:
            return f"client {client} starts at clock {start}, the document has {have}"
        for _, skip_end in skips:
            if skip_end > have:
                return f"client {client} skips clocks the document does not have"
        known[client] = max(have, end)
    for what, needs in (("refers to", shape.refs), ("deletes", shape.deletes)):
        for client, upto in needs.items():
            if upto > known.get(client, 0):
                return f"the update {what} clocks of client {client} the document does not have"
    return None


def splits_pair(shape: UpdateShape, pairs: dict[int, set[int]]) -> bool:
    """Whether the update cuts a surrogate pair of the document (`pairs`) or of its own."""
    for client, clock in shape.cuts:
        if clock in pairs.get(client, ()) or clock in shape.pairs.get(client, ()):
            return True
    return False


def integrated(shape: UpdateShape, sv: dict[int, int]) -> bool:
    return all(end is None or sv.get(client, 0) >= end
               for client, (_, end, _) in shape.structs.items())
