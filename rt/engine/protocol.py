"""Engine.IO v4 wire format: packet types, handshake errors, polling payloads.

Outbound packets are `engineio.packet.Packet` objects (python-socketio builds them and they
cache their encoding, so a broadcast is encoded once). Inbound packets are decoded here,
strictly: anything that is not a valid v4 packet is an error that closes the session, as the
reference server does.
"""
from __future__ import annotations

import base64
import binascii
import struct

from engineio.packet import CLOSE, MESSAGE, NOOP, OPEN, PING, PONG, UPGRADE, Packet

__all__ = [
    "CLOSE", "MESSAGE", "NOOP", "OPEN", "PING", "PONG", "UPGRADE", "Packet",
    "ProtocolError", "HandshakeError", "decode_packet", "decode_payload", "encode_payload",
    "websocket_frame", "wire",
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

    def body(self) -> dict:
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


def decode_payload(body: bytes) -> list[tuple[int, str | bytes | None]]:
    """A polling POST body → its packets."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("payload is not UTF-8") from exc
    return [decode_packet(part) for part in text.split(SEPARATOR)]


def wire(pkt: Packet, b64: bool = False) -> str | bytes:
    """The frame for one packet. Binary is handled here, not by Packet.encode, whose cache
    would hand the websocket form to a polling recipient of the same broadcast."""
    if pkt.binary:
        return "b" + base64.b64encode(pkt.data).decode("ascii") if b64 else bytes(pkt.data)
    return pkt.encode()


def encode_payload(packets: list[Packet]) -> str:
    """Packets for one polling response (binary as base64)."""
    return SEPARATOR.join(wire(p, b64=True) for p in packets)


def websocket_frame(data: str | bytes) -> bytes:
    """One unfragmented, unmasked server frame (RFC 6455 §5.2): text for str, binary for
    bytes."""
    if isinstance(data, str):
        payload, opcode = data.encode("utf-8"), 0x1
    else:
        payload, opcode = bytes(data), 0x2
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload
