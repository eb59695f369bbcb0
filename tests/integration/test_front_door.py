"""The front door (rt/engine/front_door.py): a new connection's plain websocket handshake is
answered without Tornado's HTTP machinery, and everything else reaches Tornado untouched
and gets exactly the answer it got before, from handler.py."""
from __future__ import annotations

import asyncio
import base64
import os

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.appliance import WAIT, running
from tests.support.raw_ws import RawWebSocket

pytestmark = pytest.mark.asyncio

WS_QUERY = "EIO=4&transport=websocket"


def upgrade_head(path: str, query: str = WS_QUERY, extra: str = "",
                 drop: tuple[str, ...] = (), version: str = "13") -> str:
    headers = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
               "Sec-WebSocket-Version": version}
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k not in drop)
    return f"GET {path}?{query} HTTP/1.1\r\n{lines}{extra}\r\n"


async def send_head(port: int, head: str, split: bool = False
                    ) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """The response head to `head` (sent in two packets when `split`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = head.encode("latin-1")
    if split:  # the server sees a part of the head first
        writer.write(raw[:20])
        await writer.drain()
        await asyncio.sleep(0.2)
        raw = raw[20:]
    writer.write(raw)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    return answer, reader, writer


async def answer_to(port: int, head: str, split: bool = False) -> bytes:
    answer, _, writer = await send_head(port, head, split)
    writer.transport.abort()
    return answer


async def test_a_plain_connect_is_adopted_and_works(tmp_path):
    async with running(tmp_path) as h:
        front = h.app.http.front
        ws = await RawWebSocket.open(h.app.port, h.path, await h.user("a"), rcvbuf=None)
        ws.send('421["heartbeat",{}]')
        assert await ws.recv() == "431[]"
        # the route's trailing slash is optional, at the front door too
        answer, reader, writer = await send_head(h.app.port, upgrade_head(h.path.rstrip("/")))
        assert answer.startswith(b"HTTP/1.1 101"), answer
        bare = RawWebSocket(reader, writer)
        assert (await bare.recv())[:1] == "0"
        assert front.counts == {"adopted": 2, "passed": 0, "silent": 0}
        # the operator sees the same in /metrics (its own request went to Tornado)
        status, body = await h.api("GET", "/metrics")
        assert status == 200
        samples = {(s.name, s.labels.get("outcome")): s.value
                   for family in text_string_to_metric_families(body.decode())
                   for s in family.samples if s.name == "rt_front_door_connections_total"}
        assert samples == {("rt_front_door_connections_total", "adopted"): 2,
                           ("rt_front_door_connections_total", "passed"): 1,
                           ("rt_front_door_connections_total", "silent"): 0}
        ws.close()
        bare.close()


@pytest.mark.parametrize("case, status", [
    ("no key", b"400"),
    ("bad key", b"400"),
    ("no upgrade", b"400"),
    ("keep-alive", b"400"),
    ("old version", b"426"),
    ("EIO=3", b"400"),
    ("unknown sid", b"400"),
    ("POST", b"400"),
])
async def test_what_it_declines_gets_the_same_refusal_from_tornado(tmp_path, case, status):
    async with running(tmp_path) as h:
        front = h.app.http.front
        path = h.path + "/"
        head = {
            "no key": upgrade_head(path, drop=("Sec-WebSocket-Key",)),
            "bad key": upgrade_head(path, drop=("Sec-WebSocket-Key",),
                                    extra="Sec-WebSocket-Key: c2hvcnQ=\r\n"),
            "no upgrade": upgrade_head(path, drop=("Upgrade",)),
            "keep-alive": upgrade_head(path, drop=("Connection",),
                                       extra="Connection: keep-alive\r\n"),
            "old version": upgrade_head(path, version="8"),
            "EIO=3": upgrade_head(path, query="EIO=3&transport=websocket"),
            "unknown sid": upgrade_head(path, query=WS_QUERY + "&sid=nobody"),
            "POST": upgrade_head(path).replace("GET", "POST", 1),
        }[case]
        answer = await answer_to(h.app.port, head)
        assert answer.split(b" ")[1] == status, answer
        assert front.counts["adopted"] == 0 and front.counts["passed"] == 1
        assert not h.app.sio.engine.sessions


async def test_origin_refused_by_tornado_and_allowed_origin_adopted(tmp_path):
    ini = "[server]\ncors_allow_origin = https://chat.example.com\n"
    async with running(tmp_path, ini) as h:
        front = h.app.http.front
        path = h.path + "/"
        refused = await answer_to(h.app.port, upgrade_head(
            path, extra="Origin: https://evil.example.net\r\n"))
        assert refused.startswith(b"HTTP/1.1 403"), refused
        assert front.counts == {"adopted": 0, "passed": 1, "silent": 0}
        allowed = await answer_to(h.app.port, upgrade_head(
            path, extra="Origin: https://chat.example.com\r\n"))
        assert allowed.startswith(b"HTTP/1.1 101"), allowed
        assert front.counts == {"adopted": 1, "passed": 1, "silent": 0}


@pytest.mark.parametrize("case", ["split head", "escaped query", "repeated header",
                                  "polling", "api"])
async def test_what_it_declines_but_tornado_accepts_still_works(tmp_path, case):
    async with running(tmp_path) as h:
        front = h.app.http.front
        path = h.path + "/"
        if case == "polling":
            answer = await answer_to(h.app.port, f"GET {path}?EIO=4&transport=polling "
                                                 "HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer
        elif case == "api":
            answer = await answer_to(h.app.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer
        else:
            head = {
                "split head": upgrade_head(path),
                "escaped query": upgrade_head(path, query="EIO=4&transport=web%73ocket"),
                "repeated header": upgrade_head(path, extra="User-Agent: a\r\nUser-Agent: b\r\n"),
            }[case]
            answer, reader, writer = await send_head(h.app.port, head,
                                                     split=case == "split head")
            assert answer.startswith(b"HTTP/1.1 101"), answer
            ws = RawWebSocket(reader, writer)
            assert (await ws.recv())[:1] == "0"  # the session's open packet
            ws.close()
        assert front.counts == {"adopted": 0, "passed": 1, "silent": 0}


async def test_a_silent_connection_is_closed_after_the_header_timeout(tmp_path):
    async with running(tmp_path) as h:
        front = h.app.http.front
        front.header_timeout = 0.3
        reader, writer = await asyncio.open_connection("127.0.0.1", h.app.port)
        # (accepted after the kernel's deferral of about a second, then 0.3 s of patience)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed by the server
        writer.close()
        assert front.counts == {"adopted": 0, "passed": 0, "silent": 1}


async def test_client_address_and_headers_reach_the_connect_handler(tmp_path):
    async with running(tmp_path) as h:
        path = h.path + "/"
        # nginx on loopback (trusted by default) names the browser: its last hop counts
        head = upgrade_head(path, extra="X-Forwarded-For: 198.51.100.7, 203.0.113.9\r\n"
                                        "User-Agent: probe/1\r\nOrigin: http://x\r\n")
        answer, reader, writer = await send_head(h.app.port, head)
        assert answer.startswith(b"HTTP/1.1 101")
        ws = RawWebSocket(reader, writer)
        open_packet = orjson.loads((await ws.recv())[1:])
        environ = h.app.sio.engine.sessions[open_packet["sid"]].environ
        assert environ == {
            "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": WS_QUERY,
            "REMOTE_ADDR": "203.0.113.9", "rt.transport": "websocket",
            "HTTP_ORIGIN": "http://x", "HTTP_USER_AGENT": "probe/1"}
        ws.close()
        front = h.app.http.front
        plan = front.plan
        # X-Real-IP wins over X-Forwarded-For, as in Tornado; garbage is not an address
        real = upgrade_head(path, extra="X-Forwarded-For: 198.51.100.7\r\n"
                                        "X-Real-IP: 192.0.2.5\r\n").encode()
        assert plan(real, "127.0.0.1")[2]["REMOTE_ADDR"] == "192.0.2.5"
        bogus = upgrade_head(path, extra="X-Forwarded-For: not-an-address\r\n").encode()
        assert plan(bogus, "127.0.0.1")[2]["REMOTE_ADDR"] == "127.0.0.1"
        # from a peer that is not a trusted proxy the headers are a claim, not a fact
        assert plan(real, "192.0.2.200")[2]["REMOTE_ADDR"] == "192.0.2.200"


async def test_heads_it_leaves_to_tornado(tmp_path):
    async with running(tmp_path) as h:
        plan, path = h.app.http.front.plan, h.path + "/"
        good = upgrade_head(path)
        assert plan(good.encode(), "127.0.0.1") is not None
        declined = [
            good[:-2],                                              # head not complete yet
            good.replace("HTTP/1.1", "HTTP/1.0", 1),
            good.replace("\r\nUpgrade", "\r\n Upgrade", 1),        # folded line
            good.replace("\r\nUpgrade", "\nUpgrade", 1),           # bare LF
            upgrade_head(path, extra="Content-Length: 0\r\n"),
            upgrade_head(path, extra="Transfer-Encoding: chunked\r\n"),
            upgrade_head(path, extra="Bad Name: x\r\n"),
            upgrade_head(path, extra="X-Ctl: a\x01b\r\n"),
            upgrade_head(path, query="EIO=4&transport=websocket&EIO=4"),
            upgrade_head(path, query="EIO=4&transport=polling"),
            upgrade_head(path, query="EIO=4&transport=websocket+"),
            upgrade_head("/elsewhere/"),
        ]
        for head in declined:
            assert plan(head.encode("latin-1"), "127.0.0.1") is None, head
