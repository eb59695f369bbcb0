"""Socket.IO packets of the server's own making, encoded by orjson.

python-socketio's `Packet` encodes with the standard library's json module, after walking
the whole payload for binary values when the packet is built: 8.8 us for a chat event
(`chat:message:delta` with its ids) against 0.24 us here. An event is encoded once per emit
wherever it goes (a room's fan-out, the recovery log, a call asked again), so the cost is
paid for every message open-webui's backend sends through the appliance.

Whatever orjson would encode differently from the standard library (dataclasses,
datetimes, subclasses of builtins, non-str keys, big integers, bytes, lone surrogates)
makes it raise, and python-socketio's own encoder takes over: binary attachments above all.
Both write compact JSON; orjson writes text as UTF-8 where the json module escapes it,
which every JSON parser reads as the same string.
"""
from __future__ import annotations

from typing import Any

import orjson
from socketio import packet as sio_packet

_ORJSON_STRICT = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
                  | orjson.OPT_PASSTHROUGH_SUBCLASS)


def dumps_plain(data: Any) -> bytes | None:
    """`data` as compact JSON (UTF-8), or None when it holds anything but plain JSON values
    (binary attachments above all): python-socketio's Packet encodes those."""
    try:
        return orjson.dumps(data, option=_ORJSON_STRICT)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return None


def plain_packet(ptype: int, data: Any, namespace: str | None = "/",
                 id: int | None = None) -> bytes | None:
    """A packet of type `ptype` (not a binary one) as python-socketio's `Packet.encode`
    writes it, in UTF-8; None when `data` needs python-socketio's own encoder."""
    body = b"" if data is None else dumps_plain(data)
    if body is None:
        return None
    head = str(ptype)
    if namespace is not None and namespace != "/":
        head += namespace + ","
    if id is not None:
        head += str(id)
    return head.encode() + body


def encode_event(data: list[Any], namespace: str = "/", id: int | None = None
                 ) -> str | list[Any]:
    """`Packet(EVENT, data, namespace, id).encode()`: the packet's text, or for a payload
    with binary values the list of the packet and its attachments, as python-socketio
    gives it."""
    plain = plain_packet(sio_packet.EVENT, data, namespace, id)
    if plain is not None:
        return plain.decode()
    encoded: str | list[Any] = sio_packet.Packet(
        sio_packet.EVENT, namespace=namespace, data=data, id=id).encode()
    return encoded
