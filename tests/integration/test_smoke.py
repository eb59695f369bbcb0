import pytest

from tests.support.appliance import running


@pytest.mark.asyncio
async def test_connect_emit(tmp_path):
    async with running(tmp_path) as h:
        tok = await h.user("u1", "Ann")
        c = await h.connect(tok)
        ack = await c.call("user-join", {"auth": {"token": tok}}, timeout=5)
        assert ack == {"id": "u1", "name": "Ann"}
        status, body = await h.api("POST", "/api/v1/emit", {"event": "events", "data": {"x": 1}, "to": {"users": ["u1"]}})
        assert status == 202, body
        assert await c.rec.wait_for("events") == {"x": 1}
