"""python-socketio 5.x's pub/sub messages as they arrive from Redis (open-webui's backend
and its own socket server speak them): what a message may be, and the checks of its
fields. Only JSON is accepted, never a pickle, and nothing is decoded beyond the JSON
parse; a field of the wrong type raises `Malformed` (the message is dropped and counted).
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

from socketio.packet import Packet

# open-webui 0.12's inbound limit is 16 MiB; nothing bigger can be a sensible emit, and a
# bigger message is not parsed (Redis's default pub/sub output limit is 32 MiB anyway)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
PICKLE_PROTO = 0x80  # first byte of every pickle of protocol 2 or later
METHODS = ("emit", "callback", "disconnect", "enter_room", "leave_room", "close_room")
# host ids of the copies appliance nodes publish for open-webui's listeners (`mirror`):
# every appliance bridge ignores them, their sessions got the original on the cluster channel
MIRROR_HOST_PREFIX = "rt-appliance-mirror-"
# the appliance's own messages on those channels (connection state recovery): "this node
# records for that session from here on" and its answer (socketio_away.py);
# python-socketio ignores methods it does not know
OWNER_METHOD = "rt-recovery-owner"
HELD_METHOD = "rt-recovery-held"  # the answer of the node that held the session
OWN_METHODS = (OWNER_METHOD, HELD_METHOD)


class Malformed(ValueError):
    """A message of python-socketio's protocol whose fields have the wrong type."""


def namespace_of(data: dict[str, Any]) -> str:
    namespace = data.get("namespace")
    if namespace is None:
        return "/"
    if not isinstance(namespace, str):
        raise Malformed("namespace is not a string")
    return namespace


def sid_of(data: dict[str, Any]) -> str:
    sid = data.get("sid")
    if not isinstance(sid, str):
        raise Malformed("sid is not a string")
    return sid


def room_of(data: dict[str, Any]) -> str:
    room = data.get("room")
    if not isinstance(room, str):
        raise Malformed("room is not a string")
    return room


def rooms_of(value: Any, name: str) -> str | list[str] | None:
    """A room / skip_sid field: absent, one name or a list of names."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise Malformed(f"{name} is not a string or a list of strings")


def reconstruct_binary(args: list[Any]) -> list[Any]:
    """python-socketio's binary form: [args with placeholders, base64 attachment, ...]."""
    if not args or not all(isinstance(a, str) for a in args[1:]):
        raise Malformed("binary data is not [payload, base64 attachments...]")
    try:
        attachments = [base64.b64decode(a, validate=True) for a in args[1:]]
    except (binascii.Error, ValueError):
        raise Malformed("an attachment is not base64") from None
    try:
        rebuilt: Any = Packet.reconstruct_binary(args[0], attachments)
    except (IndexError, KeyError, TypeError, RecursionError):
        raise Malformed("a placeholder names no attachment") from None
    if not isinstance(rebuilt, list):
        raise Malformed("binary payload is not a list")
    return rebuilt
