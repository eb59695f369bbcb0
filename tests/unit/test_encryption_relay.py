"""The encrypted-channel relay's pure parts: packet validation, the participants' view, the
key layout shared with open-webui, and the embedded state's buckets and expiry."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import pytest
from socketio.async_pubsub_manager import AsyncPubSubManager

from rt.backends.encryption_state import MAX_PACKET, TTL, MemoryRelayState, bucket_of, state_key
from rt.encryption.delivery import socketio_emit
from rt.encryption.service import Rejected, packet, view


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def code_of(value) -> str:
    with pytest.raises(Rejected) as info:
        packet(value)
    return info.value.code


def test_packets_are_base64_of_one_byte_to_one_mib() -> None:
    for size in (1, 32, MAX_PACKET):
        text = base64.b64encode(b"\x01" * size).decode()
        assert packet(text) == text
    assert code_of(base64.b64encode(b"\x01" * (MAX_PACKET + 1)).decode()) == "too_large"
    assert code_of("") == "bad_request"
    assert code_of(None) == "bad_request"
    assert code_of(["AAAA"]) == "bad_request"
    assert code_of("AAA*") == "bad_request"  # not in the alphabet
    assert code_of("AAA") == "bad_request"  # bad padding
    assert code_of("AA\nAA==") == "bad_request"  # validate=True: no stray characters


def test_refusals_never_quote_the_input() -> None:
    secret = base64.b64encode(b"secret" * 10).decode() + "*"
    with pytest.raises(Rejected) as info:
        packet(secret)
    assert secret not in str(info.value) and "secret" not in str(info.value)


def test_view_lists_bindings_of_bound_participants_and_everybody_by_name() -> None:
    state = {"channel": "c", "session": "s", "host": "p1", "expires": 0, "members": {
        "p1": {"sid": "x", "user": "ann", "name": "Ann", "key": "K1", "seen": 0, "out": 3,
               "admitted": True},
        "p2": {"sid": "y", "user": "bob", "name": "Bob", "key": None, "seen": 0, "out": 0,
               "admitted": False}}}
    assert view(state) == {
        "channel": "c", "session": "s", "host": "p1",
        "bindings": [{"identity": {"channel": "c", "session": "s", "user": "ann",
                                   "participation": "p1"}, "key": "K1"}],
        "participants": [{"participation": "p1", "user": "ann", "name": "Ann"},
                         {"participation": "p2", "user": "bob", "name": "Bob"}]}
    assert view(None) is None


def test_keys_are_open_webuis() -> None:
    # open-webui: f'{REDIS_KEY_PREFIX}:encryption:{{{sha256(channel).hexdigest()}}}'
    digest = hashlib.sha256(b"chan-1").hexdigest()
    assert state_key("open-webui", "chan-1") == f"open-webui:encryption:{{{digest}}}"
    assert state_key("", "chan-1") == f":encryption:{{{digest}}}"
    assert [bucket_of(a) for a in ("start", "join", "bind", "packet", "ping", "status",
                                   "leave")] == ["admission"] * 2 + ["traffic"] * 5


class PubSubMessages(AsyncPubSubManager):
    """python-socketio's pub/sub manager, keeping what it would publish (`_publish` is the
    method its pub/sub backends implement)."""

    name = "messages"

    def __init__(self) -> None:
        super().__init__(channel="socketio", write_only=True)
        self.sent: list[dict] = []

    async def _publish(self, data: dict) -> None:
        self.sent.append(data)


def test_events_for_open_webuis_sids_are_python_socketios_own_emit_messages() -> None:
    manager = PubSubMessages()
    event = {"kind": "mls", "packet": "AAAA", "sequence": 7}
    asyncio.run(manager.emit("encryption:event", event, namespace="/", room="sid-1"))
    assert json.loads(socketio_emit("encryption:event", event, "sid-1", manager.host_id)) == (
        manager.sent[0])


def test_admission_ten_per_minute_per_account() -> None:
    clock = Clock()
    state = MemoryRelayState(monotonic=clock)

    async def run() -> None:
        assert all([await state.admit("ann", "join", 10) for _ in range(10)])
        assert await state.admit("ann", "start", 10) is False
        assert await state.admit("bob", "join", 10) is True  # per account
        assert await state.admit("ann", "packet", 10) is True  # another bucket
        clock.now += 59.9
        assert await state.admit("ann", "join", 10) is False
        clock.now += 0.1
        assert await state.admit("ann", "join", 10) is True

    asyncio.run(run())


def test_traffic_hundred_per_second_and_four_mib() -> None:
    clock = Clock()
    state = MemoryRelayState(monotonic=clock)

    async def run() -> None:
        assert all([await state.admit("ann", "packet", 1) for _ in range(100)])
        assert await state.admit("ann", "ping", 1) is False
        clock.now += 1
        assert await state.admit("ann", "packet", 4 * MAX_PACKET - 1) is True
        assert await state.admit("ann", "packet", 2) is False  # 1 byte over
        assert await state.admit("ann", "packet", 1) is True  # exactly 4 MiB

    asyncio.run(run())


def test_embedded_states_expire_after_ttl() -> None:
    clock = Clock()
    state = MemoryRelayState(clock=clock)

    async def run() -> None:
        async with state.transaction("c") as lease:
            assert lease.state is None
            await lease.save({"channel": "c", "session": "s", "host": "p", "members": {}})
        async with state.transaction("c") as lease:
            assert lease.state["expires"] == clock.now + TTL
        clock.now += TTL
        async with state.transaction("c") as lease:
            assert lease.state is None  # expired: as if absent
        assert len(state.values) == 1
        await state.sweep()
        assert state.values == {}

    asyncio.run(run())
