"""Socket.IO v5 conformance over raw Engine.IO transports (no Socket.IO client library).

Written from the public Socket.IO v5 protocol specification and the reference test suite
(socketio/socket.io-protocol, test-suite/test-suite.js), with the appliance's deliberate
differences (docs/protocol.md §1–2): CONNECT needs `{"token": <jwt>}`, only the default
namespace exists, and a refused CONNECT closes the connection after the CONNECT_ERROR.
"""
from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.integration.test_engineio_conformance import (
    ECHO,
    FAST,
    SEP,
    T,
    connect_packet,
    error_body,
    eventually,
    install_echo,
    raw_appliance,
    recv,
    recv_closed,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

PLACEHOLDER = {"_placeholder": True, "num": 0}


async def sio_ws(h, raw, token: str | None):
    """A websocket session connected to "/" with `token`: (conn, engine sid, socket sid)."""
    conn, value = await raw.open_ws()
    await conn.write_message(connect_packet(token))
    reply = await recv(conn)
    assert reply.startswith("40{"), reply
    return conn, value["sid"], orjson.loads(reply[2:])["sid"]


async def sio_polling(h, raw, token: str):
    sid = (await raw.open_polling())["sid"]
    await raw.send(sid, connect_packet(token))
    [reply] = await raw.poll(sid)
    assert reply.startswith("40{"), reply
    return sid, orjson.loads(reply[2:])["sid"]


async def drain_polling_until_closed(raw, sid: str) -> list[str]:
    """Every packet the server still has for a polling session it closed, in order, up to
    and including the close packet; afterwards the sid is unknown."""
    packets: list[str] = []
    while "1" not in packets:
        packets += await raw.poll(sid)
    resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
    assert resp.code == 400 and error_body(resp)["code"] == 1
    return packets


# ============================================================================ connect
async def test_connect_with_auth_websocket(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        conn, eio_sid, sio_sid = await sio_ws(h, raw, token)
        assert isinstance(sio_sid, str) and sio_sid and sio_sid != eio_sid
        assert h.app.gateway.identities[sio_sid].id == "u1"
        # nothing else follows the CONNECT answer
        with pytest.raises(asyncio.TimeoutError):
            await recv(conn, timeout=0.2)


async def test_connect_with_auth_polling(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        await raw.send(sid, connect_packet(token))
        [reply] = await raw.poll(sid)
        assert reply.startswith("40{")
        handshake = orjson.loads(reply[2:])
        assert set(handshake) == {"sid"} and handshake["sid"] != sid


async def test_connect_unknown_namespace(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        conn, _ = await raw.open_ws()
        await conn.write_message("40/random")
        assert await recv(conn) == '44/random,{"message":"Invalid namespace"}'
        # protocol §2: a connection that has no namespace left is closed
        assert await recv_closed(conn) == []
        # a client connected to "/" keeps its connection when another namespace is refused
        install_echo(h)
        conn, eio_sid, _ = await sio_ws(h, raw, token)
        await conn.write_message('40/admin,{"token":"x"}')
        assert await recv(conn) == '44/admin,{"message":"Invalid namespace"}'
        await conn.write_message(f'421["{ECHO}","still here"]')
        assert await recv(conn) == '431["still here"]'
        assert eio_sid in h.app.sio.engine.sessions


@pytest.mark.parametrize("auth,message", [
    (None, "token_missing"), ({}, "token_missing"), ({"token": "garbage"}, "token_invalid"),
])
async def test_refused_connect_websocket(tmp_path, auth, message):
    async with raw_appliance(tmp_path) as (h, raw):
        conn, value = await raw.open_ws()
        await conn.write_message("40" + (orjson.dumps(auth).decode() if auth is not None else ""))
        # the CONNECT_ERROR arrives, then the close
        assert await recv_closed(conn) == ["44" + orjson.dumps({"message": message}).decode()]
        await eventually(lambda: value["sid"] not in h.app.sio.engine.sessions)
        assert not h.app.gateway.identities


async def test_refused_connect_polling(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        # the GET is already waiting when the CONNECT is refused
        sid = (await raw.open_polling())["sid"]
        waiting = asyncio.ensure_future(raw.poll(sid))
        await eventually(lambda: h.app.sio.engine.sessions[sid]._poll is not None)
        await raw.send(sid, "40")
        packets = await asyncio.wait_for(waiting, T)
        if packets[-1] != "1":
            packets += await drain_polling_until_closed(raw, sid)
        assert packets == ['44{"message":"token_missing"}', "1"]
        resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
        assert resp.code == 400
        # no GET waiting: the next one collects the CONNECT_ERROR and the close
        sid = (await raw.open_polling())["sid"]
        await raw.send(sid, '40{"token":"garbage"}')
        assert await drain_polling_until_closed(raw, sid) == [
            '44{"message":"token_invalid"}', "1"]


# ============================================================================ events
async def test_event_with_ack(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        install_echo(h)
        token = await h.user("u1", "Ann")
        conn, _, _ = await sio_ws(h, raw, token)
        await conn.write_message(f'42456["{ECHO}",1,"2",{{"3":[false]}}]')
        assert await recv(conn) == '43456[1,"2",{"3":[false]}]'
        # an application event, with its ack
        join = orjson.dumps(["user-join", {"auth": {"token": token}}]).decode()
        await conn.write_message("427" + join)
        reply = await recv(conn)
        assert reply.startswith("437[") and orjson.loads(reply[3:]) == [{"id": "u1", "name": "Ann"}]
        # an unknown event asked for an ack: answered with an error, connection kept
        await conn.write_message('428["no-such-event",{}]')
        reply = await recv(conn)
        assert reply.startswith("438[") and orjson.loads(reply[3:])[0]["error"] == "bad_request"
        # an event without ack id gets no ack
        await conn.write_message(f'42["{ECHO}","no ack"]')
        with pytest.raises(asyncio.TimeoutError):
            await recv(conn, timeout=0.2)


async def test_event_with_ack_polling(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        install_echo(h)
        token = await h.user("u1", "Ann")
        sid, _ = await sio_polling(h, raw, token)
        await raw.send(sid, f'4212["{ECHO}",{{"a":null}}]')
        assert await raw.poll(sid) == ['4312[{"a":null}]']


async def test_binary_event_with_attachments(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        got = asyncio.get_running_loop().create_future()

        async def sink(sid, *args):
            got.set_result(args)
        h.app.sio.on("conformance:sink", sink)
        install_echo(h)
        token = await h.user("u1", "Ann")
        conn, _, _ = await sio_ws(h, raw, token)
        # without ack: the handler gets the bytes in place of the placeholders
        await conn.write_message(
            '452-["conformance:sink",{"_placeholder":true,"num":0},'
            '{"x":{"_placeholder":true,"num":1}}]')
        await conn.write_message(b"\x01\x02\x03", binary=True)
        assert not got.done()  # one attachment still due
        await conn.write_message(b"\x04\x05\x06", binary=True)
        assert await asyncio.wait_for(got, T) == (b"\x01\x02\x03", {"x": b"\x04\x05\x06"})
        # with ack: the ack carries binary too (BINARY_ACK)
        await conn.write_message(
            f'452-789["{ECHO}",{{"_placeholder":true,"num":0}},{{"_placeholder":true,"num":1}}]')
        await conn.write_message(b"\x01\x02\x03", binary=True)
        await conn.write_message(b"\x04\x05\x06", binary=True)
        assert [await recv(conn) for _ in range(3)] == [
            '462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
            b"\x01\x02\x03", b"\x04\x05\x06"]


async def test_binary_ack_from_client(tmp_path):
    """The server calls the client (HTTP API /call does this) and the client answers with a
    plain ack and with a binary ack."""
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        conn, _, sio_sid = await sio_ws(h, raw, token)
        call = asyncio.ensure_future(h.app.emitter.call(sio_sid, "question", {"q": 1}, T))
        ask = await recv(conn)
        assert ask.startswith("42") and ask.endswith('["question",{"q":1}]')
        ack_id = ask[2:ask.index("[")]
        await conn.write_message(f'43{ack_id}["answer"]')
        assert await asyncio.wait_for(call, T) == "answer"
        call = asyncio.ensure_future(h.app.emitter.call(sio_sid, "question", {"q": 2}, T))
        ask = await recv(conn)
        ack_id = ask[2:ask.index("[")]
        await conn.write_message(f'461-{ack_id}[{{"_placeholder":true,"num":0}}]')
        await conn.write_message(b"\xca\xfe", binary=True)
        assert await asyncio.wait_for(call, T) == b"\xca\xfe"


async def test_server_sends_events_and_disconnect(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        conn, eio_sid, sio_sid = await sio_ws(h, raw, token)
        status, _ = await h.api("POST", "/api/v1/emit", {
            "event": "events", "data": {"k": "v"}, "to": {"users": ["u1"]}})
        assert status == 202
        assert await recv(conn) == '42["events",{"k":"v"}]'
        await h.app.sio.disconnect(sio_sid)
        assert await recv(conn) == "41"


# ============================================================================ malformed
MALFORMED = {
    "unknown packet type": "abc",
    "empty packet": "",
    "type out of range": "7",
    "event payload not an array": "2{}",
    "invalid ack id": '2abc["x",1]',
    "event without name": "2[]",
    "event without payload": "2",
    "numeric-only payload": "2 1",
    "reserved event connect": '2["connect",{"token":"other"}]',
    "reserved event disconnect": '2["disconnect","x"]',
    "reserved event connect_error": '2["connect_error"]',
    "ack without array": '31{"a":1}',
    "ack without id": '3["x"]',
    "disconnect with payload": '1{"x":1}',
    "connect payload not an object": '0"abc"',
    "second connect": '0{"token":"again"}',
    "connect error from client": '4{"message":"x"}',
    "binary without attachment count": '5-["x",{"_placeholder":true,"num":0}]',
    "binary with zero attachments": '50-["x"]',
    "binary with too many attachments": '511-["x",{"_placeholder":true,"num":0}]',
    "binary with bad count": '5a-["x"]',
    "placeholder out of range": '51-["x",{"_placeholder":true,"num":1}]',
    "placeholder without num": '51-["x",{"_placeholder":true}]',
    "event to a namespace not joined": '2/other,["x"]',
    "disconnect from a namespace not joined": "1/other,",
    "not JSON": '2["x",',
    "nested too deeply": '2["x",' + "[" * 100_000 + "]" * 100_000 + "]",
}


@pytest.mark.parametrize("packet", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_packet_closes_connection(tmp_path, packet):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        conn, eio_sid, sio_sid = await sio_ws(h, raw, token)
        await conn.write_message("4" + packet)
        assert await recv_closed(conn) == []
        await eventually(lambda: eio_sid not in h.app.sio.engine.sessions)
        # the disconnect handler ran: the identity of the sid is gone, not replaced
        await eventually(lambda: sio_sid not in h.app.gateway.identities)


async def test_reserved_event_cannot_rerun_authentication(tmp_path):
    """An event named "connect" must never reach the connect handler: it would re-identify
    a live sid as whichever user's token the client puts in the arguments."""
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        other = await h.user("u2", "Bob")
        conn, eio_sid, sio_sid = await sio_ws(h, raw, token)
        auth = orjson.dumps({"token": other}).decode()
        await conn.write_message(f'42["connect",{{}},{auth}]')
        assert await recv_closed(conn) == []
        status, body = await h.api("GET", "/api/v1/users/u2/presence")
        assert status == 200 and not body["sessions"], body
        assert all(i.id != "u2" for i in h.app.gateway.identities.values())


async def test_malformed_packet_before_connect_closes_connection(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        for packet in ("4abc", '42["x"]', "41", '43["x"]'):
            conn, value = await raw.open_ws()
            await conn.write_message(packet)
            assert await recv_closed(conn) == [], packet
            await eventually(lambda: value["sid"] not in h.app.sio.engine.sessions)


async def test_malformed_attachment_sequence_closes_connection(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        # a text packet where an attachment is due
        conn, eio_sid, _ = await sio_ws(h, raw, token)
        await conn.write_message('451-["x",{"_placeholder":true,"num":0}]')
        await conn.write_message(f'42["{ECHO}"]')
        assert await recv_closed(conn) == []
        # binary data that no binary packet announced (also as base64 on a text frame)
        for frame in (b"\x01", "bAQ=="):
            conn, eio_sid, _ = await sio_ws(h, raw, token)
            await conn.write_message(frame, binary=isinstance(frame, bytes))
            assert await recv_closed(conn) == []
            await eventually(lambda: eio_sid not in h.app.sio.engine.sessions)
        assert not h.app.sio._binary_packet


async def test_malformed_packet_polling(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        sid, sio_sid = await sio_polling(h, raw, token)
        # a valid Engine.IO message carrying an invalid Socket.IO packet
        await raw.send(sid, '42{}')
        assert await drain_polling_until_closed(raw, sid) == ["1"]
        await eventually(lambda: sio_sid not in h.app.gateway.identities)


async def test_valid_edge_packets_are_accepted(tmp_path):
    """What the reference parser accepts must not close the connection."""
    async with raw_appliance(tmp_path) as (h, raw):
        install_echo(h)
        token = await h.user("u1", "Ann")
        conn, eio_sid, _ = await sio_ws(h, raw, token)
        for packet, reply in [
            (f'42["{ECHO}"]', None),  # event without arguments
            (f'421["{ECHO}"]', "431[]"),
            (f'422["{ECHO}",null,true,1.5,"\\u001e"]', '432[null,true,1.5,"\\u001e"]'),
            (f'42/,3["{ECHO}",0]', "433[0]"),  # the default namespace spelled out
            (f'42{2**52}["{ECHO}",0]', f"43{2**52}[0]"),
            (f'42["{ECHO}",{{"_placeholder":false,"num":99}}]', None),  # not a placeholder
            ('43999["late ack for nothing"]', None),  # unknown ack id: ignored
        ]:
            await conn.write_message(packet)
            if reply is not None:
                assert await recv(conn) == reply, packet
        with pytest.raises(asyncio.TimeoutError):
            await recv(conn, timeout=0.2)
        assert eio_sid in h.app.sio.engine.sessions


# ============================================================================ disconnect
async def test_client_disconnect_packet(tmp_path):
    async with raw_appliance(tmp_path, FAST) as (h, raw):
        install_echo(h)
        token = await h.user("u1", "Ann")
        conn, eio_sid, sio_sid = await sio_ws(h, raw, token)
        await conn.write_message("41")
        # the Socket.IO session ends: disconnect handler ran, presence forgot the sid
        await eventually(lambda: sio_sid not in h.app.gateway.identities)
        status, body = await h.api("GET", "/api/v1/users/u1/presence")
        assert status == 200 and not body.get("sessions"), body
        # the Engine.IO connection stays, as with the reference server: heartbeats go on
        assert await recv(conn) == "2"
        await conn.write_message("3")
        # and the client may connect the namespace again on it, as a new socket
        await conn.write_message(connect_packet(token))
        reply = await recv(conn)
        assert reply.startswith("40{") and orjson.loads(reply[2:])["sid"] != sio_sid
        await conn.write_message(f'421["{ECHO}","back"]')
        assert await recv(conn) == '431["back"]'


async def test_client_disconnect_packet_polling(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        token = await h.user("u1", "Ann")
        sid, sio_sid = await sio_polling(h, raw, token)
        await raw.send(sid, "41", "1")  # what socket.io-client sends on disconnect()
        await eventually(lambda: sio_sid not in h.app.gateway.identities)
        resp = await raw.get(f"EIO=4&transport=polling&sid={sid}")
        assert resp.code == 400


async def test_several_packets_of_one_payload_in_order(tmp_path):
    async with raw_appliance(tmp_path) as (h, raw):
        install_echo(h)
        token = await h.user("u1", "Ann")
        sid = (await raw.open_polling())["sid"]
        await raw.send(sid, connect_packet(token), *(f'42{n}["{ECHO}",{n}]' for n in range(5)))
        packets = await raw.poll_until(sid, 6)
        assert packets[0].startswith("40{")
        assert packets[1:] == [f"43{n}[{n}]" for n in range(5)]
        assert SEP not in "".join(packets)
