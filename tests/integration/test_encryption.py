"""Encrypted channels (`encryption:*`, open-webui 0.12) through real appliances: two
in-process nodes on a real Redis (the participants on different nodes), and one node on
embedded state; real python-socketio clients over websockets.

Who may take part comes from a small table of channel members (`ChannelTable`): the same
boundary the appliance's open-webui client fills in production, not a stand-in for Redis or
the socket. Packets are random bytes: the relay never looks inside them.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from rt.app import Appliance
from rt.backends.encryption_state import MAX_PACKET, MemoryRelayState, state_key
from rt.backends.factory import build_redis_backend
from rt.backends.redis_conn import RedisTarget
from rt.encryption.service import ENDED, UNAVAILABLE, EncryptionRelay
from tests.support.appliance import WAIT, Client, Harness, running, settings_for
from tests.support.encryption import ChannelTable, ask, attach, event
from tests.support.redis_servers import redis_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.asyncio

CHANNEL = "dm-ann-bob"
# room for a packet over the relay's limit (open-webui 0.12 accepts 16 MiB messages)
INI = "[server]\nmax_message_bytes = 16777216\n[log]\nlevel = warning\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key() -> str:
    return b64(os.urandom(32))


def blob(size: int = 64) -> str:
    return b64(os.urandom(size))


@contextlib.asynccontextmanager
async def redis_nodes(tmp_path: Path, server, table: ChannelTable, prefix: str):
    """Two appliances sharing `server` under `prefix`, each with its relay."""
    target = RedisTarget(url=server.url, key_prefix=prefix)
    apps: list[Appliance] = []
    harnesses: list[Harness] = []
    try:
        for name in ("a", "b"):
            settings = settings_for(tmp_path / name, INI)
            app = Appliance(settings, backend=build_redis_backend(settings, target))
            await app.start()
            apps.append(app)
            harnesses.append(Harness(app))
            # open-webui's pub/sub is there too: a publisher for sids of no appliance node
            client = app.backend.store.client
            app.encryption_test_relay = attach(
                app, table, publish=lambda payload, c=client: c.publish("socketio", payload),
                host_id=f"test-{name}")
        yield harnesses
    finally:
        # the apps first: their stop disconnects the sessions while Redis is open, so the
        # relays' leave-on-disconnect finishes before the client closes
        for app in apps:
            await app.stop()
        for h in harnesses:
            await h.close()


def relay_of(h: Harness) -> EncryptionRelay:
    return h.app.encryption_test_relay


@pytest.fixture
def prefix() -> str:
    return f"rt-enc-{os.urandom(5).hex()}"


@pytest_asyncio.fixture
async def raw(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def people(a: Harness, b: Harness) -> tuple[Client, Client]:
    """ann on node a, bob on node b, both in the channel's room."""
    for uid in ("ann", "bob", "cat", "dan"):
        await a.user(uid)
    status, _ = await a.api("PUT", f"/api/v1/channels/{CHANNEL}", {"members": ["ann", "bob"]})
    assert status == 200
    ann = await a.connect(a.token("ann"))
    bob = await b.connect(b.token("bob"))
    for client in (ann, bob):
        await client.call("user-join", {"auth": {}}, timeout=WAIT)
    return ann, bob


async def handshake(ann: Client, bob: Client) -> dict:
    """ann starts and binds, bob joins and binds, ann admits bob: both are admitted."""
    started = await ask(ann, "start", {"channel": CHANNEL, "action": "start"})
    assert started["ok"] is True, started
    session, host = started["session"], started["participation"]
    assert (await ask(ann, "bind", {"channel": CHANNEL, "session": session,
                                    "participation": host, "key": key()}))["ok"] is True
    joined = await ask(bob, "join", {"channel": CHANNEL, "action": "join", "session": session})
    assert joined["ok"] is True, joined
    guest = joined["participation"]
    key_package = blob()
    assert (await ask(bob, "bind", {"channel": CHANNEL, "session": session,
                                    "participation": guest, "key": key(),
                                    "packet": key_package}))["ok"] is True
    candidate = await event(ann, lambda e: e["kind"] == "candidate")
    assert (candidate["sender"], candidate["packet"], candidate["sequence"]) == (
        guest, key_package, 1)
    welcome = blob()
    admitted = await ask(ann, "packet", {"channel": CHANNEL, "session": session,
                                         "participation": host, "kind": "admit",
                                         "target": guest, "packet": blob(), "welcome": welcome})
    assert admitted["ok"] is True, admitted
    got = await event(bob, lambda e: e["kind"] == "welcome")
    assert (got["sender"], got["host"], got["packet"], got["sequence"]) == (
        host, host, welcome, 1)
    return {"session": session, "host": host, "guest": guest}


# ---------------------------------------------------------------------- the whole flow
async def test_handshake_packets_and_leave_across_two_nodes(tmp_path, redis_server, prefix,
                                                            raw) -> None:
    table = ChannelTable({CHANNEL: {"ann", "bob"}})
    async with redis_nodes(tmp_path, redis_server, table, prefix) as (a, b):
        ann, bob = await people(a, b)

        assert await ask(bob, "status", {"channel": CHANNEL}) == {
            "ok": True, "available": False, "session": None}

        started = await ask(ann, "start", {"channel": CHANNEL, "action": "start"})
        host, session = started["participation"], started["session"]
        assert started == {
            "ok": True, "channel": CHANNEL, "session": session, "host": host,
            "bindings": [], "participants": [{"participation": host, "user": "ann",
                                              "name": "Ann"}],
            "participation": host}
        # not joinable before the host's key is bound
        assert (await ask(bob, "status", {"channel": CHANNEL}))["available"] is False
        ann_key = key()
        bound = await ask(ann, "bind", {"channel": CHANNEL, "session": session,
                                        "participation": host, "key": ann_key})
        assert bound["bindings"] == [{"identity": {"channel": CHANNEL, "session": session,
                                                   "user": "ann", "participation": host},
                                      "key": ann_key}]
        # the channel's room hears that a session can be joined
        assert await bob.rec.wait_for("encryption:available") == {
            "channel": CHANNEL, "session": session}
        assert await ask(bob, "status", {"channel": CHANNEL}) == {
            "ok": True, "available": True, "session": session}

        joined = await ask(bob, "join", {"channel": CHANNEL, "action": "join",
                                         "session": session})
        guest = joined["participation"]
        assert joined["host"] == host and joined["participants"] == [
            {"participation": host, "user": "ann", "name": "Ann"},
            {"participation": guest, "user": "bob", "name": "Bob"}]
        bob_key, key_package = key(), blob(300)
        await ask(bob, "bind", {"channel": CHANNEL, "session": session,
                                "participation": guest, "key": bob_key,
                                "packet": key_package})
        candidate = await event(ann, lambda e: e["kind"] == "candidate")
        assert candidate["sender"] == guest and candidate["packet"] == key_package
        assert candidate["sequence"] == 1 and candidate["session"] == session
        assert len(candidate["bindings"]) == 2

        commit, welcome = blob(), blob(500)
        ack = await ask(ann, "packet", {"channel": CHANNEL, "session": session,
                                        "participation": host, "kind": "admit",
                                        "target": guest, "packet": commit,
                                        "welcome": welcome})
        assert ack["ok"] is True and ack["session"] == session
        got = await event(bob, lambda e: e["kind"] == "welcome")
        assert (got["sender"], got["packet"], got["sequence"]) == (host, welcome, 1)

        # MLS packets both ways, each recipient's sequence counting on
        to_ann, to_bob = blob(1000), blob(2000)
        await ask(bob, "packet", {"channel": CHANNEL, "session": session,
                                  "participation": guest, "kind": "mls", "packet": to_ann})
        got = await event(ann, lambda e: e["kind"] == "mls")
        assert (got["sender"], got["packet"], got["sequence"]) == (guest, to_ann, 2)
        await ask(ann, "packet", {"channel": CHANNEL, "session": session,
                                  "participation": host, "kind": "mls", "packet": to_bob})
        got = await event(bob, lambda e: e["kind"] == "mls")
        assert (got["sender"], got["packet"], got["sequence"]) == (host, to_bob, 2)
        assert (await ask(bob, "ping", {"channel": CHANNEL, "session": session,
                                        "participation": guest}))["ok"] is True

        # the shared state is open-webui's JSON, with bindings but never a packet
        raw_state = await raw.get(state_key(prefix, CHANNEL))
        state = json.loads(raw_state)
        assert set(state) == {"channel", "session", "host", "members", "expires"}
        assert state["members"][guest] == {
            "sid": bob.get_sid(), "user": "bob", "name": "Bob", "key": bob_key,
            "seen": state["members"][guest]["seen"], "out": 2, "admitted": True}
        assert state["members"][host]["out"] == 2
        for packet in (key_package, commit, welcome, to_ann, to_bob):
            assert packet.encode() not in raw_state
        assert 0 < await raw.ttl(state_key(prefix, CHANNEL)) <= 90

        assert await ask(bob, "leave", {"channel": CHANNEL, "session": session,
                                        "participation": guest}) == {"ok": True}
        assert await event(bob, lambda e: e["kind"] == "ended") == {
            "kind": "ended", "channel": CHANNEL, "session": session}
        departed = await event(ann, lambda e: e["kind"] == "departed")
        assert (departed["participation"], departed["admitted"], departed["sequence"]) == (
            guest, True, 3)

        assert await ask(ann, "leave", {"channel": CHANNEL, "session": session,
                                        "participation": host}) == {"ok": True}
        await bob.rec.wait_for("encryption:available", lambda e: e["session"] is None)
        assert await raw.get(state_key(prefix, CHANNEL)) is None
        assert relay_of(a).local == {} and relay_of(b).local == {}
        # every participant was an appliance session, on this node or the other: none of
        # the events went to open-webui's pub/sub
        for h in (a, b):
            assert relay_of(h).delivery.counts["openwebui"] == 0
            assert relay_of(h).delivery.counts["appliance"] > 0


async def test_embedded_state_single_node(tmp_path) -> None:
    table = ChannelTable({CHANNEL: {"ann", "bob"}})
    async with running(tmp_path, INI) as h:
        relay = attach(h.app, table)
        assert isinstance(relay.state, MemoryRelayState)
        for uid in ("ann", "bob"):
            await h.user(uid)
        ann = await h.connect(h.token("ann"))
        bob = await h.connect(h.token("bob"))
        ids = await handshake(ann, bob)
        payload = blob(4000)
        await ask(bob, "packet", {"channel": CHANNEL, "session": ids["session"],
                                  "participation": ids["guest"], "kind": "mls",
                                  "packet": payload})
        got = await event(ann, lambda e: e["kind"] == "mls")
        assert (got["packet"], got["sequence"]) == (payload, 2)
        # the host leaving ends the session for everybody
        await ask(ann, "leave", {"channel": CHANNEL, "session": ids["session"],
                                 "participation": ids["host"]})
        await event(bob, lambda e: e["kind"] == "ended")
        assert relay.local == {} and relay.state.values == {}


# ---------------------------------------------------------------------- refusals
async def test_packet_over_the_size_limit_is_refused(tmp_path, redis_server, prefix,
                                                     raw) -> None:
    table = ChannelTable({CHANNEL: {"ann", "bob"}})
    async with redis_nodes(tmp_path, redis_server, table, prefix) as (a, b):
        ann, bob = await people(a, b)
        ids = await handshake(ann, bob)
        before = await raw.get(state_key(prefix, CHANNEL))
        big = await ask(bob, "packet", {"channel": CHANNEL, "session": ids["session"],
                                        "participation": ids["guest"], "kind": "mls",
                                        "packet": b64(os.urandom(MAX_PACKET + 1))})
        assert big["ok"] is False and big["error"] == UNAVAILABLE
        assert big["code"] == "too_large"
        not_base64 = await ask(bob, "packet", {"channel": CHANNEL, "session": ids["session"],
                                               "participation": ids["guest"], "kind": "mls",
                                               "packet": "not base64!"})
        assert not_base64["code"] == "bad_request"
        assert await raw.get(state_key(prefix, CHANNEL)) == before  # nothing changed
        # the next packet is the next in ann's sequence: the refused ones never went out
        payload = b64(os.urandom(MAX_PACKET))
        assert (await ask(bob, "packet", {"channel": CHANNEL, "session": ids["session"],
                                          "participation": ids["guest"], "kind": "mls",
                                          "packet": payload}))["ok"] is True
        got = await event(ann, lambda e: e["kind"] == "mls")
        assert (got["packet"] == payload, got["sequence"]) == (True, 2)


async def test_non_members_are_refused(tmp_path, redis_server, prefix) -> None:
    table = ChannelTable({CHANNEL: {"ann", "bob", "cat"}})
    async with redis_nodes(tmp_path, redis_server, table, prefix) as (a, b):
        ann, bob = await people(a, b)
        ids = await handshake(ann, bob)
        cat = await b.connect(b.token("cat"))  # in the channel, not in the session
        dan = await a.connect(a.token("dan"))  # not in the channel
        session = ids["session"]

        for action in ("status", "start", "join"):
            got = await ask(dan, action, {"channel": CHANNEL, "session": session})
            assert (got["ok"], got["error"], got["code"]) == (False, UNAVAILABLE, "forbidden")
        # cat claims ann's participation: refused, nothing forwarded
        stolen = await ask(cat, "packet", {"channel": CHANNEL, "session": session,
                                           "participation": ids["host"], "kind": "mls",
                                           "packet": blob()})
        assert (stolen["ok"], stolen["code"]) == (False, "forbidden")
        # bob may not admit (only the host does), nor use a stale session id
        assert (await ask(bob, "packet", {"channel": CHANNEL, "session": session,
                                          "participation": ids["guest"], "kind": "admit",
                                          "target": ids["host"], "packet": blob(),
                                          "welcome": blob()}))["code"] == "forbidden"
        assert (await ask(bob, "packet", {"channel": CHANNEL, "session": "old",
                                          "participation": ids["guest"], "kind": "mls",
                                          "packet": blob()}))["code"] == "not_found"
        # malformed requests
        assert (await ask(bob, "status", ["not", "an", "object"]))["code"] == "bad_request"
        assert (await ask(bob, "status", {"channel": "x" * 129}))["code"] == "bad_request"
        assert (await ask(bob, "status", {"channel": ""}))["code"] == "bad_request"

        # what ann gets next is bob's real packet, as her next sequence number
        payload = blob()
        await ask(bob, "packet", {"channel": CHANNEL, "session": session,
                                  "participation": ids["guest"], "kind": "mls",
                                  "packet": payload})
        got = await event(ann, lambda e: e["kind"] == "mls")
        assert (got["sender"], got["packet"], got["sequence"]) == (ids["guest"], payload, 2)


async def test_polling_connections_are_refused(tmp_path) -> None:
    table = ChannelTable({CHANNEL: {"ann"}})
    async with running(tmp_path, INI) as h:
        attach(h.app, table)
        await h.user("ann")
        ann = await h.connect(h.token("ann"), transports=("polling",))
        got = await ask(ann, "start", {"channel": CHANNEL, "action": "start"})
        assert (got["ok"], got["code"]) == (False, "forbidden")


# ---------------------------------------------------------------------- rate limits
async def test_admission_is_limited_per_account_in_the_shared_bucket(
        tmp_path, redis_server, prefix, raw) -> None:
    table = ChannelTable({CHANNEL: {"ann", "bob"}})
    async with redis_nodes(tmp_path, redis_server, table, prefix) as (a, b):
        ann, bob = await people(a, b)
        bob2 = await a.connect(a.token("bob"))  # another tab, on the other node
        # ten attempts per minute whatever their outcome, across tabs and nodes
        for i in range(10):
            got = await ask(bob if i % 2 else bob2, "join",
                            {"channel": CHANNEL, "action": "join", "session": "nope"})
            assert got["code"] == "not_found", got
        got = await ask(bob, "join", {"channel": CHANNEL, "action": "join", "session": "nope"})
        assert (got["ok"], got["code"]) == (False, "rate_limited")
        bucket = await raw.hgetall(state_key(prefix, "rate:bob:admission"))
        assert int(bucket[b"count"]) == 11
        assert 0 < await raw.ttl(state_key(prefix, "rate:bob:admission")) <= 60
        # other accounts and the traffic bucket are unaffected
        assert (await ask(ann, "start", {"channel": CHANNEL, "action": "start"}))["ok"] is True
        assert (await ask(bob, "status", {"channel": CHANNEL}))["ok"] is True


async def test_traffic_bucket_filled_by_another_server_refuses(tmp_path, redis_server, prefix,
                                                               raw) -> None:
    table = ChannelTable({CHANNEL: {"ann", "bob"}})
    async with redis_nodes(tmp_path, redis_server, table, prefix) as (a, b):
        ann, bob = await people(a, b)
        ids = await handshake(ann, bob)
        # bob's traffic this second as open-webui's relay counts it: 100 requests already
        bucket = state_key(prefix, "rate:bob:traffic")
        await raw.delete(bucket)
        await raw.hset(bucket, mapping={"count": 100, "bytes": 0})
        await raw.expire(bucket, 30)  # a window that cannot run out during the test
        got = await ask(bob, "packet", {"channel": CHANNEL, "session": ids["session"],
                                        "participation": ids["guest"], "kind": "mls",
                                        "packet": blob()})
        assert (got["ok"], got["code"]) == (False, "rate_limited")
        # the byte bound (4 MiB in the window) holds as well
        await raw.hset(bucket, mapping={"count": 0, "bytes": 4 * MAX_PACKET - 10})
        got = await ask(ann, "ping", {"channel": CHANNEL, "session": ids["session"],
                                      "participation": ids["host"]})
        assert got["ok"] is True  # ann's own bucket
        got = await ask(bob, "ping", {"channel": CHANNEL, "session": ids["session"],
                                      "participation": ids["guest"]})
        assert (got["ok"], got["code"]) == (False, "rate_limited")


# ---------------------------------------------------------------------- leaving
async def test_disconnect_leaves_and_host_disconnect_ends(tmp_path, redis_server, prefix,
                                                          raw) -> None:
    table = ChannelTable({CHANNEL: {"ann", "bob"}})
    async with redis_nodes(tmp_path, redis_server, table, prefix) as (a, b):
        ann, bob = await people(a, b)
        ids = await handshake(ann, bob)
        await bob.disconnect()
        departed = await event(ann, lambda e: e["kind"] == "departed")
        assert departed["participation"] == ids["guest"]
        assert [p["user"] for p in departed["participants"]] == ["ann"]
        assert relay_of(b).local == {}

        bob = await b.connect(b.token("bob"))
        joined = await ask(bob, "join", {"channel": CHANNEL, "action": "join",
                                         "session": ids["session"]})
        assert joined["ok"] is True
        await ann.disconnect()
        assert (await event(bob, lambda e: e["kind"] == "ended"))["session"] == ids["session"]
        assert await raw.get(state_key(prefix, CHANNEL)) is None
        # node b learns the end from the shared state: bob may start a session at once
        assert (await ask(bob, "start", {"channel": CHANNEL, "action": "start"}))["ok"]


async def test_sweep_removes_participants_no_longer_allowed(tmp_path, redis_server, prefix,
                                                            raw) -> None:
    table = ChannelTable({CHANNEL: {"ann", "bob"}})
    async with redis_nodes(tmp_path, redis_server, table, prefix) as (a, b):
        ann, bob = await people(a, b)
        ids = await handshake(ann, bob)
        table.channels[CHANNEL].discard("bob")  # bob left the channel in open-webui
        await relay_of(a).sweep()  # ann's node knows nothing about bob's rights
        assert ids["guest"] in json.loads(await raw.get(state_key(prefix, CHANNEL)))["members"]
        await relay_of(b).sweep()
        await event(bob, lambda e: e["kind"] == "ended")
        departed = await event(ann, lambda e: e["kind"] == "departed")
        assert departed["participation"] == ids["guest"]
        state = json.loads(await raw.get(state_key(prefix, CHANNEL)))
        assert list(state["members"]) == [ids["host"]]
        # and bob cannot come back
        got = await ask(bob, "join", {"channel": CHANNEL, "action": "join",
                                      "session": ids["session"]})
        assert got["code"] == "forbidden"


async def test_invalidate_ends_the_session_for_everybody(tmp_path, redis_server, prefix,
                                                         raw) -> None:
    table = ChannelTable({CHANNEL: {"ann", "bob"}})
    async with redis_nodes(tmp_path, redis_server, table, prefix) as (a, b):
        ann, bob = await people(a, b)
        ids = await handshake(ann, bob)
        await relay_of(b).invalidate(CHANNEL)
        for client in (ann, bob):
            got = await event(client, lambda e: e["kind"] == "ended")
            assert got["session"] == ids["session"]
        assert await raw.get(state_key(prefix, CHANNEL)) is None
        # ann's node learns it from the state at her next request
        got = await ask(ann, "ping", {"channel": CHANNEL, "session": ids["session"],
                                      "participation": ids["host"]})
        assert got["code"] == "not_found"
        assert (await ask(ann, "start", {"channel": CHANNEL, "action": "start"}))["ok"]


async def test_a_busy_lock_fails_closed(tmp_path, redis_server, prefix, raw) -> None:
    table = ChannelTable({CHANNEL: {"ann", "bob"}})
    async with redis_nodes(tmp_path, redis_server, table, prefix) as (a, b):
        ann, bob = await people(a, b)
        ids = await handshake(ann, bob)
        # a stalled worker holds the channel's lock (as a redis-py Lock would)
        await raw.set(state_key(prefix, CHANNEL) + ":lock", b"someone-else", px=30000)
        got = await ask(bob, "ping", {"channel": CHANNEL, "session": ids["session"],
                                      "participation": ids["guest"]})
        assert (got["ok"], got["error"], got["code"]) == (False, ENDED, "unavailable")
        # bob's node told him the session ended; its state in Redis is untouched
        assert (await event(bob, lambda e: e["kind"] == "ended"))["channel"] == CHANNEL
        assert relay_of(b).local == {}
        state = json.loads(await raw.get(state_key(prefix, CHANNEL)))
        assert set(state["members"]) == {ids["host"], ids["guest"]}
