"""An editor at full speed: no Yjs update or awareness update of an authorised writer is
refused for rate (open-webui's editor does not resend a refused one, so its note would
silently diverge); other events of the same socket still are."""
from __future__ import annotations

import asyncio
import time

import pytest

from rt.documents.service import RESYNC_INTERVAL
from tests.integration.test_documents import DOC, Editor, PyReplica, api_text, setup_note
from tests.support.appliance import WAIT, running

pytestmark = pytest.mark.asyncio

SLOW = "[limits]\nevents_per_second = 2\nevents_burst = 3\n"


async def test_an_editor_at_acknowledgement_speed_is_never_refused(tmp_path):
    async with running(tmp_path, SLOW) as h:
        tok = await h.user("a")
        await setup_note(h, owner="a")
        editor = Editor(await h.connect(tok), PyReplica("pycrdt"))
        await editor.join()
        text = ""
        for i in range(300):  # 100 times the event rate, each update acked before the next
            chunk = chr(ord("a") + i % 26)
            ack = await editor.send(editor.replica.insert(len(text), chunk))
            assert ack == {"ok": True}, (i, ack)
            text += chunk
            awareness = await editor.client.call("ydoc:awareness:update", {
                "document_id": DOC, "update": [1, 2, 3]}, timeout=WAIT)
            assert not (isinstance(awareness, dict) and awareness.get("error")), awareness
        assert await api_text(h) == text
        assert h.app.limits.refused["events"] == 0
        # the rate still holds for everything else the socket sends
        acks = [await editor.client.call("join-note", {"note_id": "n1"}, timeout=WAIT)
                for _ in range(10)]
        assert {"ok": True} in acks
        assert any(isinstance(a, dict) and a.get("error") == "rate_limited" for a in acks)
        assert h.app.limits.refused["events"] >= 1


async def test_a_refused_update_is_followed_by_the_state_to_resynchronise(tmp_path):
    ini = "[documents]\nmax_update_bytes = 300\n"
    async with running(tmp_path, ini) as h:
        await setup_note(h, owner="a", read=["r"])
        editor = Editor(await h.connect(await h.user("a")), PyReplica("pycrdt"))
        await editor.join()
        await editor.type(0, "kept")
        states = len(editor.client.rec.of("ydoc:document:state"))
        too_big = editor.replica.insert(0, "x" * 400)  # the editor's copy is now ahead
        ack = await editor.send(too_big)
        assert ack["error"] == "too_large"
        # the document as everybody has it, for the editor to start again from
        state = await editor.client.rec.wait_for("ydoc:document:state",
                                                 lambda d: b"kept" in d["state"])
        assert len(editor.client.rec.of("ydoc:document:state")) == states + 1
        check = PyReplica("pycrdt")
        check.apply(state["state"])
        assert check.value() == "kept"
        # a reader's refused update diverges nothing: no state for it
        reader = Editor(await h.connect(await h.user("r")), PyReplica("pycrdt"))
        await reader.join()
        before = len(reader.client.rec.of("ydoc:document:state"))
        assert (await reader.send(reader.replica.insert(0, "no")))["error"] == "forbidden"
        await h.app.documents.tasks.settle(0.2)
        assert len(reader.client.rec.of("ydoc:document:state")) == before


async def test_refusals_in_a_row_resynchronise_at_most_once_a_second(tmp_path):
    """A writer whose updates are refused again and again is sent the state once at once
    and once more at the end of the interval, never once per refusal."""
    ini = "[documents]\nmax_update_bytes = 300\n[limits]\nevents_per_second = 1000\n"
    async with running(tmp_path, ini) as h:
        await setup_note(h, owner="a")
        editor = Editor(await h.connect(await h.user("a")), PyReplica("pycrdt"))
        await editor.join()
        await editor.type(0, "kept")
        states = len(editor.client.rec.of("ydoc:document:state"))
        started = time.monotonic()
        for _ in range(20):
            ack = await editor.send(editor.replica.insert(0, "x" * 400))
            assert ack["error"] == "too_large"
        elapsed = time.monotonic() - started
        await asyncio.sleep(RESYNC_INTERVAL + 0.5)  # the trailing one, for the later refusals
        await h.app.documents.tasks.settle(WAIT)
        sent = len(editor.client.rec.of("ydoc:document:state")) - states
        # at once, and at the end of each interval the refusals went on into (one of them
        # when 20 refusals take less than a second, as they do but on a crawling machine)
        assert 2 <= sent <= 2 + int(elapsed / RESYNC_INTERVAL), (sent, elapsed)
        last = editor.client.rec.of("ydoc:document:state")[-1]
        check = PyReplica("pycrdt")
        check.apply(last["state"])
        assert check.value() == "kept"
