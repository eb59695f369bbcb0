"""Documents and the appliance as a child process (`python appliance.py serve`): SIGKILL
while a client streams acknowledged updates, restarts, and property-based hostile updates
that must all be refused without crashing or blocking the process."""
from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from typing import Any

import pycrdt
import pytest
import requests
import socketio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rt.auth import TokenVerifier
from rt.documents.yjs import EMPTY_UPDATE
from tests.integration.test_documents import (
    DOC,
    FAST,
    Editor,
    PyReplica,
    _deep_any,
    eventually,
    setup_note,
    y_py,
)
from tests.support.appliance import API_KEY, SECRET, WAIT, ApplianceProcess, Harness

QUIET = "[log]\nlevel = warning\n"  # thousands of refusals are logged at INFO


def wired_process(tmp_path, ini: str = "") -> ApplianceProcess:
    return ApplianceProcess(tmp_path, FAST + QUIET + ini)


def tokens_in(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"<(\d+)>", text)]


@pytest.mark.asyncio
async def test_sigkill_while_streaming_loses_no_acknowledged_update(tmp_path):
    ini = "[documents]\ncompaction_threshold = 25\n"  # compactions happen during the stream
    proc = wired_process(tmp_path, ini)
    proc.start()
    h = Harness(None, f"http://127.0.0.1:{proc.port}")
    acked: list[int] = []
    sent: list[int] = []
    try:
        await setup_note(h, owner="a")
        client = await h.connect(await h.user("a"))
        editor = Editor(client, PyReplica())
        await editor.join()

        async def stream() -> None:
            for i in range(100_000):
                update = editor.replica.insert(len(editor.replica.value()), f"<{i}>")
                sent.append(i)
                ack = await client.call("ydoc:document:update",
                                        {"document_id": DOC, "update": update}, timeout=WAIT)
                assert ack == {"ok": True}, ack
                acked.append(i)

        streaming = asyncio.create_task(stream())
        await eventually(lambda: len(acked) >= 120 or streaming.done(), timeout=30)
        assert not streaming.done(), streaming
        proc.proc.send_signal(signal.SIGKILL)  # the stream goes on until the socket dies
        await eventually(lambda: not client.connected, timeout=WAIT)
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)
        await asyncio.to_thread(proc.proc.wait, 10)
        assert proc.proc.returncode == -signal.SIGKILL
    finally:
        proc.kill()
        await h.close()

    proc2 = wired_process(tmp_path, ini)
    proc2.start()
    h = Harness(None, f"http://127.0.0.1:{proc2.port}")
    try:
        after = Editor(await h.connect(h.token("a")), PyReplica())
        await after.join()
        found = tokens_in(after.pull())
        # every acknowledged update is there, in order; at most the one in flight more
        assert found[:len(acked)] == acked
        assert found in (acked, acked + [acked[-1] + 1])
        assert len(sent) <= len(acked) + 1
        # and the document carries on after the crash
        await after.type(0, "<restarted>")
        status, body = await h.api("GET", f"/api/v1/documents/{DOC}")
        assert status == 200
    finally:
        assert proc2.stop() == 0
        await h.close()


@pytest.mark.asyncio
async def test_restart_keeps_documents_and_content(tmp_path):
    ini = "[documents]\ncontent_debounce = 60\n"
    proc = wired_process(tmp_path, ini)
    proc.start()
    h = Harness(None, f"http://127.0.0.1:{proc.port}")
    try:
        await setup_note(h, owner="a")
        editor = Editor(await h.connect(await h.user("a")), PyReplica())
        await editor.join()
        await editor.type(0, "survives restarts", data={"content": "<p>survives restarts</p>"})
        await editor.client.call("ydoc:document:leave", {"document_id": DOC}, timeout=WAIT)
    finally:
        assert proc.stop(signal.SIGTERM) == 0  # graceful: the debounced content is flushed
        await h.close()
    proc2 = wired_process(tmp_path, ini)
    proc2.start()
    h = Harness(None, f"http://127.0.0.1:{proc2.port}")
    try:
        again = Editor(await h.connect(h.token("a")), PyReplica())
        await again.join()
        assert again.pull() == "survives restarts"
        status, body = await h.api("GET", f"/api/v1/documents/{DOC}")
        assert body["content"] == "<p>survives restarts</p>"
    finally:
        assert proc2.stop() == 0
        await h.close()


class ThreadedClient:
    """A python-socketio AsyncClient on an event loop of its own thread, for a test that is
    synchronous (hypothesis). Not the sync `socketio.Client`: its Engine.IO client hands
    every message to a new thread, so the attachment of a binary event (the state sent
    after a refused update) can overtake its header, and the next message (an ack) is then
    taken for the attachment and lost."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = socketio.AsyncClient(reconnection=False)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT + 5)

    def connect(self, base: str, token: str) -> None:
        self.run(self.client.connect(base, socketio_path="/ws/socket.io",
                                     transports=["websocket"], auth={"token": token},
                                     wait_timeout=WAIT))

    def call(self, event: str, data: Any) -> Any:
        return self.run(self.client.call(event, data, timeout=WAIT))

    def close(self) -> None:
        try:
            self.run(self.client.disconnect())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT)
            self.loop.close()


def rich_update() -> bytes:
    """A full state with text, formatting, an emoji, maps, arrays and XML."""
    doc = pycrdt.Doc(client_id=0x5EED)
    text = doc.get("t", type=pycrdt.Text)
    text += "rich 😀 text"
    text.format(0, 4, {"bold": True})
    doc.get("m", type=pycrdt.Map)["k"] = {"a": [1, 2.5, None, True, "x"], "b": b"\x00\x01"}
    doc.get("arr", type=pycrdt.Array).extend([1, "two", [3]])
    frag = doc.get("xml", type=pycrdt.XmlFragment)
    frag.children.append(pycrdt.XmlElement("p", {"class": "c"}, [pycrdt.XmlText("para")]))
    del text[0:2]
    return doc.get_update()


def test_hostile_updates_are_all_refused_and_never_crash_or_block(tmp_path):
    proc = wired_process(tmp_path)
    proc.start()
    base = f"http://127.0.0.1:{proc.port}"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    client = ThreadedClient()
    try:
        for path, body in (("/api/v1/users/a", {"name": "A"}),
                           ("/api/v1/notes/n1", {"owner": "a"})):
            assert requests.put(base + path, json=body, headers=auth, timeout=WAIT).ok
        token = TokenVerifier(SECRET).issue("a", 3600, {})
        client.connect(base, token)
        assert client.call("ydoc:document:join", {"document_id": DOC}) == {"ok": True}
        replica = PyReplica()
        good = replica.insert(0, "still 😀 here")
        slowest = [0.0]

        def send(update) -> dict:
            started = time.monotonic()
            ack = client.call("ydoc:document:update", {"document_id": DOC, "update": update})
            slowest[0] = max(slowest[0], time.monotonic() - started)
            return ack

        assert send(good) == {"ok": True}
        # every truncation of real updates, as bytes and as lists of ints
        spare = PyReplica()
        spare.apply(good)
        for update in (rich_update(), spare.insert(5, "!"), good):
            for cut in range(len(update)):
                assert send(update[:cut])["error"] == "bad_request", (update, cut)
                assert send(list(update[:cut]))["error"] == "bad_request", (update, cut)
        # updates built to crash or stall a Yrs decoder: deep nesting, huge counts
        for bomb in (_deep_any(7, 150_000), b"\xff\xff\xff\xff\x0f", b"\x01\xff\xff\xff\x7f",
                     b"\x00\x01\x07\xff\xff\xff\xff\x0f"):
            assert send(bomb)["error"] == "bad_request"

        @settings(max_examples=2000, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(st.binary(max_size=600), st.booleans())
        def random_bytes(data: bytes, as_list: bool) -> None:
            ack = send(list(data) if as_list else data)
            if data == EMPTY_UPDATE:  # the one valid update among them: changes nothing
                assert ack == {"ok": True}
            else:
                assert ack.get("error") == "bad_request", (data, ack)

        random_bytes()

        # never crashed, never blocked; the document is intact and still editable
        assert proc.proc.poll() is None
        assert slowest[0] < 3.0, slowest  # no update stalls the decoder (a loaded CI box: slack)
        state = client.call("ydoc:document:state", {"document_id": DOC})
        assert state is None
        other = ThreadedClient()
        got: list[dict] = []
        # the first argument (an offset of connection state recovery may follow)
        other.client.on("ydoc:document:state", lambda data, *offset: got.append(data))
        other.connect(base, token)
        try:
            ack = other.call("ydoc:document:join", {"document_id": DOC})
            assert ack == {"ok": True}
            deadline = time.monotonic() + WAIT
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
            check = PyReplica("ypy" if y_py is not None else "pycrdt")
            check.apply(got[0]["state"])
            assert check.value() == "still 😀 here"
        finally:
            other.close()
        assert send(replica.insert(0, ">")) == {"ok": True}
    finally:
        client.close()
        assert proc.stop() == 0
