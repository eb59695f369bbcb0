"""A large document's state is one message larger than `max_outbound_bytes`: the joiner gets
it whole and stays connected (a large state is never a reason to count a client as slow),
while a client that lets many messages pile up is still cut off (test_backpressure.py)."""
from __future__ import annotations

import pytest

from tests.integration.test_documents import DOC, Editor, PyReplica, setup_note
from tests.support.appliance import running

pytestmark = pytest.mark.asyncio

INI = ("[limits]\nmax_outbound_bytes = 65536\nevents_per_second = 100000\n"
       "events_burst = 100000\n[documents]\nmax_update_bytes = 4000000\n"
       "max_document_bytes = 8000000\n[server]\nmax_message_bytes = 8000000\n")


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_state_larger_than_the_outbound_limit_reaches_the_joiner(tmp_path, transport):
    async with running(tmp_path, INI) as h:
        await setup_note(h, owner="a", read=["b"])
        a = Editor(await h.connect(await h.user("a")), PyReplica())
        await a.join()
        text = "x" * 1_000_000
        await a.type(0, text)  # a state of about 1 MB, 15 times the outbound limit
        b = Editor(await h.connect(await h.user("b"), transports=(transport,)), PyReplica())
        await b.join()
        assert b.pull() == text
        assert b.client.connected
        assert h.app.sio.engine.slow_consumers == 0
        assert DOC in h.app.documents.editors
