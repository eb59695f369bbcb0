"""The relay of encrypted channels (`encryption:*`, open-webui 0.12): MLS packets between
the browsers of a DM or a private group, which the server can neither read nor keep.

Browsers encrypt and decrypt; the relay only admits participants, forwards their packets
and tells them who is in the session. The rules are open-webui's own (`socket/encryption.py`
of 0.12.4), so that a session can be shared with browsers on open-webui's socket server
through the same Redis state (backends/encryption_state.py):

- `start` creates a session (the caller becomes its *host*), `join` adds a participant to
  the current one, `bind` publishes the participant's 32-byte key (a joiner's key package
  goes to the host as a `candidate`), `packet` forwards an MLS message to every admitted
  participant (`admit`: the host's commit to the others and its welcome to the joiner),
  `ping` keeps a participant alive, `leave` removes it (the host leaving ends the session),
  `status` says whether a session can be joined.
- Every answer is an ack `{ok: true, ...}` or `{ok: false, error}` with open-webui's texts
  (its browser only looks at `ok`), plus `code` and `message` saying what was wrong.
- Each recipient's events carry a sequence number kept in the state, so a browser notices a
  lost delivery without the relay storing packets. They go to the recipient's sid on
  whichever server holds it (encryption_delivery.py).
- Participants silent for 45 s are removed by the next request in the channel or by
  `sweep()` (every 30 s, as open-webui does), which also removes this node's participants
  who are no longer allowed in the channel.

Who may take part comes from outside (`may_join(sid, identity, channel_id)`): with open-webui,
its channel membership, the channel being a DM or a private group, and the user's
`features.channels` and `features.encrypted_channels` permissions (admins always). Packets
are validated (base64, at most 1 MiB) and never logged; on a failure of the shared state the
relay fails closed: the local participants of the channel are told the session ended.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from .. import rooms
from ..auth import Identity
from ..backends.encryption_state import MAX_PACKET, Lease, RelayState
from ..core.errors import StoreError
from ..metrics import Figure
from .delivery import SidDelivery

log = logging.getLogger("rt.encryption")

ACTIONS = ("start", "status", "join", "bind", "packet", "leave", "ping")
MAX_CHANNEL = 128  # characters of a channel id
MAX_MESSAGE = 3 * MAX_PACKET  # JSON size of one request
MAX_MEMBERS = 128
KEY_BYTES = 32
SILENT = 45.0  # seconds without an action after which a participant is gone
SWEEP_INTERVAL = 30.0
# open-webui's texts: its browser shows neither, but they are part of the ack
UNAVAILABLE = "Private chat is unavailable or the session changed."
ENDED = "Private chat ended."

# (sid, identity, channel id) -> allowed; the sid lets the answer be asked with that tab's
# own token. Raises when it cannot tell (open-webui unreachable).
MayJoin = Callable[[str, Identity, str], Awaitable[bool]]


class Rejected(Exception):
    """A refused request; nothing changed. `code` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Unchecked(Exception):
    """Whether the user may take part could not be found out (open-webui unreachable)."""


def require(condition: Any, code: str, message: str) -> None:
    if not condition:
        raise Rejected(code, message)


def packet(value: Any, what: str = "packet") -> str:
    """A base64 string of 1 byte to 1 MiB, returned unchanged."""
    require(isinstance(value, str) and 0 < len(value) <= (MAX_PACKET + 2) // 3 * 4,
            "too_large" if isinstance(value, str) and value else "bad_request",
            f"'{what}' must be base64 of 1 byte to {MAX_PACKET} bytes")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("bad_request", f"'{what}' is not base64") from None
    require(0 < len(decoded) <= MAX_PACKET, "too_large",
            f"'{what}' must be base64 of 1 byte to {MAX_PACKET} bytes")
    return value


def view(state: dict | None) -> dict | None:
    """What participants see of a session: bindings and names, never packets."""
    if not state:
        return None
    return shown(state)


def shown(state: dict) -> dict:
    """view() of a session known to exist."""
    return {
        "channel": state["channel"],
        "session": state["session"],
        "host": state["host"],
        "bindings": [
            {"identity": {"channel": state["channel"], "session": state["session"],
                          "user": p["user"], "participation": pid},
             "key": p["key"]}
            for pid, p in state["members"].items() if p.get("key")
        ],
        "participants": [{"participation": pid, "user": p["user"], "name": p["name"]}
                         for pid, p in state["members"].items()],
    }


class EncryptionRelay:
    def __init__(self, sio, state: RelayState, may_join: MayJoin | None, *,
                 delivery: SidDelivery | None = None,
                 protocol_logging: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.time) -> None:
        self.sio = sio
        self.state = state
        self.delivery = delivery or SidDelivery(sio)
        self.may_join = may_join
        self.protocol_logging = protocol_logging
        self.clock = clock
        # this node's participants: sid -> channel, and who they are (for the sweep)
        self.local: dict[str, str] = {}
        self.identities: dict[str, Identity] = {}

    def figures(self) -> Iterator[Figure]:
        yield Figure("rt_encryption_participants", "Participants of encrypted channels on "
                     "this node", len(self.local))

    def local_count(self) -> int:
        return len(self.local)

    # ------------------------------------------------------------------ requests
    async def handle(self, action: str, sid: str, identity: Identity, data: Any) -> dict:
        channel: str | None = None
        authorized = False
        try:
            require(isinstance(data, dict), "bad_request", "payload must be an object")
            channel = data.get("channel")
            require(isinstance(channel, str) and 0 < len(channel) <= MAX_CHANNEL,
                    "bad_request", f"'channel' must be a string of 1 to {MAX_CHANNEL} characters")
            try:
                size = len(json.dumps(data))  # open-webui's measure, for the byte buckets
            except (TypeError, ValueError):
                raise Rejected("bad_request", "payload must be plain JSON") from None
            require(size <= MAX_MESSAGE, "too_large", f"request larger than {MAX_MESSAGE} bytes")
            await self.authorize(sid, identity, channel)
            authorized = True
            require(await self.state.admit(identity.id, action, size), "rate_limited",
                    "too many private chat requests, try again later")
            async with self.state.transaction(channel) as lease:
                return await self._act(action, sid, identity, channel, data, lease)
        except Rejected as exc:
            return {"ok": False, "error": UNAVAILABLE, "code": exc.code, "message": str(exc)}
        except Unchecked:
            return {"ok": False, "error": ENDED, "code": "unavailable",
                    "message": "access to this channel could not be checked, try again"}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("encryption:%s from %s failed: %s", action, sid, _safe(exc))
            if authorized:  # fail closed: the shared state can no longer be trusted here
                await self.fail_local(channel)
            return {"ok": False, "error": ENDED, "code": "unavailable",
                    "message": "private chat ended: the relay state is unavailable"}

    async def authorize(self, sid: str, identity: Identity, channel: str) -> None:
        # polling requests pass through proxies' logs and buffers; protocol logging would
        # write packets to the log
        require(self.sio.transport(sid) == "websocket", "forbidden",
                "private chat needs a websocket connection")
        require(not self.protocol_logging(), "forbidden",
                "private chat is off while protocol logging is on")
        require(identity.role in ("user", "admin"), "forbidden", "not allowed")
        if self.may_join is None:
            raise Rejected("forbidden", "private chat needs open-webui as the source of "
                           "channels ([openwebui] url)")
        try:
            allowed = await self.may_join(sid, identity, channel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("private chat eligibility of %s not checked: %s", sid, _safe(exc))
            raise Unchecked() from None
        require(allowed, "forbidden", "not allowed to use private chat in this channel")

    async def _act(self, action: str, sid: str, identity: Identity, channel: str, data: dict,
                   lease: Lease) -> dict:
        state = await self.prune(lease, lease.state)
        if action == "status":
            return {"ok": True,
                    "available": bool(state and state["members"][state["host"]].get("key")),
                    "session": state["session"] if state else None}
        if action in ("start", "join"):
            return await self.reserve(action, sid, identity, channel, data, lease, state)
        if not state or data.get("session") != state["session"]:
            raise Rejected("not_found", "no such private chat session (it ended or changed)")
        require(self.local.get(sid) == channel, "forbidden", "not a participant of this session")
        pid = data.get("participation")
        member = state["members"].get(pid) if isinstance(pid, str) else None
        if (not isinstance(pid, str) or not member or member["sid"] != sid
                or member["user"] != identity.id):
            raise Rejected("forbidden", "not a participant of this session")
        member["seen"] = self.clock()
        if action == "leave":
            await self.remove(lease, state, pid)
            return {"ok": True}
        if action == "bind":
            await self.bind(lease, state, pid, member, data)
        elif action == "ping":
            await lease.save(state)
        elif action == "packet":
            await self.forward(lease, state, pid, member, data)
        else:
            raise Rejected("bad_request", f"unknown action {action!r}")
        return {"ok": True, **shown(state)}

    async def reserve(self, action: str, sid: str, identity: Identity, channel: str,
                      data: dict, lease: Lease, state: dict | None) -> dict:
        # another node (or open-webui) may have ended the session: the state is the truth
        if self.local.get(sid) == channel and (
                not state or not any(p["sid"] == sid for p in state["members"].values())):
            self._forget(sid)
        require(sid not in self.local, "forbidden",
                "this connection already takes part in a private chat")
        if action == "start":
            require(state is None, "forbidden", "a private chat session is already running")
            pid = str(uuid.uuid4())
            state = {"channel": channel, "session": str(uuid.uuid4()), "host": pid,
                     "members": {}}
        else:
            if not state or data.get("session") != state["session"]:
                raise Rejected("not_found", "no such private chat session (it ended or changed)")
            require(len(state["members"]) < MAX_MEMBERS, "forbidden", "the session is full")
            require(not any(p["user"] == identity.id for p in state["members"].values()),
                    "forbidden", "already in this session from another tab")
            require(state["members"][state["host"]].get("key"), "not_found",
                    "the session is not ready yet")
            pid = str(uuid.uuid4())
        state["members"][pid] = {"sid": sid, "user": identity.id, "name": identity.name,
                                 "key": None, "seen": self.clock(), "out": 0,
                                 "admitted": action == "start"}
        self.local[sid] = channel
        self.identities[sid] = identity
        await lease.save(state)
        return {"ok": True, **shown(state), "participation": pid}

    async def bind(self, lease: Lease, state: dict, pid: str, member: dict, data: dict) -> None:
        require(member["key"] is None, "forbidden", "the key is already bound")
        key = packet(data.get("key"), "key")
        require(len(base64.b64decode(key)) == KEY_BYTES, "bad_request",
                f"'key' must be {KEY_BYTES} bytes")
        member["key"] = key
        if pid != state["host"]:
            key_package = packet(data.get("packet"))
            await self.deliver(lease, state, [state["host"]],
                               {"kind": "candidate", "sender": pid, "packet": key_package})
        else:
            await lease.save(state)
            await self.invite(state, state["channel"])

    async def forward(self, lease: Lease, state: dict, pid: str, member: dict,
                      data: dict) -> None:
        require(member["key"] and member["admitted"], "forbidden", "not admitted yet")
        body = packet(data.get("packet"))
        others = [i for i, p in state["members"].items() if i != pid and p["admitted"]]
        if data.get("kind") == "admit":
            require(pid == state["host"], "forbidden", "only the host admits participants")
            target = data.get("target")
            joining = state["members"].get(target) if isinstance(target, str) else None
            if (not isinstance(target, str) or not joining or not joining.get("key")
                    or joining["admitted"]):
                raise Rejected("not_found", "no such participant waiting to be admitted")
            welcome = packet(data.get("welcome"), "welcome")
            joining["admitted"] = True
            await self.deliver(lease, state, others,
                               {"kind": "mls", "sender": pid, "packet": body})
            await self.deliver(lease, state, [target],
                               {"kind": "welcome", "sender": pid, "packet": welcome})
        else:
            require(data.get("kind") == "mls", "bad_request", "'kind' must be 'mls' or 'admit'")
            await self.deliver(lease, state, others, {"kind": "mls", "sender": pid, "packet": body})

    # ------------------------------------------------------------------ deliveries
    async def deliver(self, lease: Lease, state: dict, recipients: list[str],
                      event: dict) -> None:
        # the per-recipient sequence is saved before anything is sent: a browser that
        # misses an event sees the gap, and no packet is ever stored
        targets = []
        for pid in recipients:
            member = state["members"][pid]
            member["out"] += 1
            targets.append((member["sid"], member["out"]))
        await lease.save(state)
        seen = shown(state)
        for sid, sequence in targets:
            await self.delivery.emit("encryption:event",
                                     {**event, **seen, "sequence": sequence}, sid)

    async def invite(self, state: dict | None, channel: str) -> None:
        await self.sio.emit("encryption:available",
                            {"channel": channel, "session": state["session"] if state else None},
                            room=rooms.channel(channel))

    async def close(self, lease: Lease, state: dict | None) -> None:
        await lease.save(None)
        if state:
            for p in state["members"].values():
                self._forget(p["sid"])
                await self.delivery.emit("encryption:event", {
                    "kind": "ended", "channel": lease.channel, "session": state["session"]},
                    p["sid"])
        await self.invite(None, lease.channel)

    async def remove(self, lease: Lease, state: dict, *pids: str) -> None:
        if state["host"] in pids:
            await self.close(lease, state)
            return
        # every departing participant is out before any departure is forwarded
        removed = [(pid, state["members"].pop(pid)) for pid in pids]
        for pid, p in removed:
            self._forget(p["sid"])
            await self.delivery.emit("encryption:event", {
                "kind": "ended", "channel": state["channel"], "session": state["session"]},
                p["sid"])
            await self.deliver(lease, state,
                               [i for i, m in state["members"].items() if m["admitted"]],
                               {"kind": "departed", "participation": pid,
                                "admitted": p["admitted"]})

    async def prune(self, lease: Lease, state: dict | None,
                    refused: frozenset[str] = frozenset()) -> dict | None:
        """Remove silent participants and those whose sid is in `refused`."""
        if not state:
            return None
        cutoff = self.clock() - SILENT
        stale = [pid for pid, p in state["members"].items()
                 if p["seen"] < cutoff or p["sid"] in refused]
        if state["host"] in stale:
            await self.close(lease, state)
            return None
        if stale:
            await self.remove(lease, state, *stale)
        return state

    async def fail_local(self, channel: str | None) -> None:
        """Tell this node's participants of `channel` (all when None) that it ended."""
        for sid, local_channel in list(self.local.items()):
            if channel is None or local_channel == channel:
                self._forget(sid)
                await self.sio.emit("encryption:event", {"kind": "ended", "channel": local_channel},
                                    to=sid, ignore_queue=True)

    def _forget(self, sid: str) -> None:
        self.local.pop(sid, None)
        self.identities.pop(sid, None)

    # ------------------------------------------------------------------ lifecycle
    async def disconnected(self, sid: str, identity: Identity | None = None) -> None:
        """A participant's connection ended: it leaves its session (gateway disconnect hook)."""
        channel = self.local.get(sid)
        if not channel:
            return
        self._forget(sid)
        try:
            async with self.state.transaction(channel) as lease:
                if lease.state:
                    for pid, p in list(lease.state["members"].items()):
                        if p["sid"] == sid:
                            await self.remove(lease, lease.state, pid)
                            break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("leaving the private chat of %s failed: %s", sid, _safe(exc))
            await self.fail_local(channel)

    async def invalidate(self, channel: str) -> None:
        """The channel's access changed: its session ends before anything more is sent."""
        try:
            async with self.state.transaction(channel) as lease:
                await self.close(lease, lease.state)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("ending a private chat failed: %s", _safe(exc))
            await self.fail_local(channel)

    async def sweep(self) -> None:
        """Every SWEEP_INTERVAL: prune the sessions this node takes part in, removing local
        participants who are no longer allowed in the channel."""
        for channel in set(self.local.values()):
            refused = await self._refused(channel)
            try:
                async with self.state.transaction(channel) as lease:
                    if not lease.state:
                        await self.fail_local(channel)
                    else:
                        await self.prune(lease, lease.state, refused)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("private chat sweep failed: %s", _safe(exc))
                await self.fail_local(channel)
        await self.state.sweep()

    async def _refused(self, channel: str) -> frozenset[str]:
        """Local sids of `channel` whose user may no longer join it. Asked before the lock
        is taken (the answer may come over HTTP); an unanswered question keeps the
        participant: open-webui itself ends sessions whose channel access changes."""
        refused = set()
        for sid, local_channel in list(self.local.items()):
            identity = self.identities.get(sid)
            if local_channel != channel or identity is None or self.may_join is None:
                continue
            try:
                if not await self.may_join(sid, identity, channel):
                    refused.add(sid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("private chat eligibility of %s not checked: %s", sid, _safe(exc))
        return frozenset(refused)


def _safe(exc: BaseException) -> str:
    """What may be logged of an exception: a store's own message, else only its type (the
    text of others may quote the request, and packets are never logged)."""
    return str(exc) if isinstance(exc, StoreError) else type(exc).__name__
