"""Engine.IO v4 wire format: packet types, handshake errors, polling payloads.

Outbound packets are `engineio.packet.Packet` objects (python-socketio builds them and they
cache their encoding, so a broadcast is encoded once). Inbound packets are decoded here,
strictly: anything that is not a valid v4 packet is an error that closes the session, as the
reference server does.
"""
from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Iterator
from typing import Any

from engineio.packet import CLOSE, MESSAGE, NOOP, OPEN, PING, PONG, UPGRADE, Packet

__all__ = [
    "CLOSE", "MESSAGE", "NOOP", "OPEN", "PING", "PONG", "UPGRADE", "Packet",
    "SEPARATOR", "ProtocolError", "HandshakeError", "decode_packet", "decode_payload",
    "encode_payload", "iter_payload", "payload_text", "message_frame", "websocket_frame",
    "Frame", "frame_size",
    "wire",
]

SEPARATOR = "\x1e"  # record separator between packets of one polling payload


class ProtocolError(ValueError):
    """The peer sent something that is not Engine.IO v4."""


class HandshakeError(Exception):
    """A request refused before (or instead of) a session: HTTP status and error body."""

    # codes and messages of the public Engine.IO server
    UNKNOWN_TRANSPORT = (0, "Transport unknown")
    UNKNOWN_SID = (1, "Session ID unknown")
    BAD_HANDSHAKE_METHOD = (2, "Bad handshake method")
    BAD_REQUEST = (3, "Bad request")
    FORBIDDEN = (4, "Forbidden")
    UNSUPPORTED_PROTOCOL_VERSION = (5, "Unsupported protocol version")

    def __init__(self, kind: tuple[int, str], status: int = 400):
        super().__init__(kind[1])
        self.code, self.message = kind
        self.status = status

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


def decode_packet(raw: str | bytes) -> tuple[int, str | bytes | None]:
    """One inbound packet → (type, data). Binary frames are MESSAGE packets."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return MESSAGE, bytes(raw)
    if not raw:
        raise ProtocolError("empty packet")
    head = raw[0]
    if head == "b":  # base64 binary message, polling only
        try:
            return MESSAGE, base64.b64decode(raw[1:], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("invalid base64 packet") from exc
    if head < "0" or head > "6":
        raise ProtocolError(f"unknown packet type {head!r}")
    return ord(head) - 48, raw[1:]


# a separator not followed by the head of a packet: an empty or unknown packet
_BAD_HEAD = re.compile("\x1e(?:[^0-6b]|\\Z)")


def payload_text(body: bytes) -> str:
    """A polling POST body, checked for what can be checked in one pass over it (in C):
    UTF-8, no empty packet, every packet's head known. A body of a megabyte may hold
    hundreds of thousands of packets; decoding them one by one is left to `iter_payload`,
    paced by the session's inbound budget. (A base64 packet's content is checked when it
    is decoded.)"""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("payload is not UTF-8") from exc
    if not text or text[0] not in "0123456b" or _BAD_HEAD.search(text) is not None:
        raise ProtocolError("empty or unknown packet in payload")
    return text


def iter_payload(text: str) -> Iterator[str]:
    """The packets of a payload, one at a time (no list of all of them at once)."""
    start = 0
    while True:
        end = text.find(SEPARATOR, start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end]
        start = end + 1


def decode_payload(body: bytes) -> list[tuple[int, str | bytes | None]]:
    """A polling POST body → its packets."""
    return [decode_packet(part) for part in iter_payload(payload_text(body))]


def wire(pkt: Packet) -> str | bytes | bytearray:
    """The frame for one packet. Binary is handled here, not by Packet.encode, whose cache
    would hand the websocket form to a polling recipient of the same broadcast. Binary data
    is passed on as it is (a large Yjs state is not copied)."""
    if pkt.binary:
        data = pkt.data
        return data if isinstance(data, (bytes, bytearray)) else bytes(data)
    return str(pkt.encode())


def wire_text(pkt: Packet) -> str:
    """The form of a packet in a polling payload: binary as base64."""
    if pkt.binary:
        return "b" + base64.b64encode(pkt.data).decode("ascii")
    return str(pkt.encode())


def encode_payload(packets: list[Packet]) -> str:
    """Packets for one polling response."""
    return SEPARATOR.join(map(wire_text, packets))


# A frame as written: one piece, or its header and its payload when the payload is large
# enough that joining them would cost a copy of it (a 32 MB document state: ~10 ms of the
# event loop); the transport writes the two pieces without joining them.
Frame = bytes | tuple[bytes, bytes | bytearray]
JOIN_BELOW = 64 * 1024


def frame_size(frame: Frame) -> int:
    return len(frame) if isinstance(frame, bytes) else len(frame[0]) + len(frame[1])


def websocket_frame(data: str | bytes | bytearray) -> Frame:
    """One unfragmented, unmasked server frame (RFC 6455 §5.2): text for str, binary for
    bytes."""
    payload: bytes | bytearray
    if isinstance(data, str):
        payload, opcode = data.encode("utf-8"), 0x1
    else:
        payload, opcode = data, 0x2
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    if size >= JOIN_BELOW:
        return header, payload
    return header + payload


def message_frame(text: bytes) -> bytes:
    """The websocket frame of a MESSAGE packet whose text is `text` (UTF-8): a text frame
    of "4" + text, built without the str round trip of `websocket_frame(wire(pkt))`."""
    size = len(text) + 1
    if size < 126:
        header = struct.pack("!BBB", 0x81, size, 0x34)
    elif size <= 0xFFFF:
        header = struct.pack("!BBHB", 0x81, 126, size, 0x34)
    else:
        header = struct.pack("!BBQB", 0x81, 127, size, 0x34)
    return header + text
