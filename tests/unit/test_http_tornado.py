"""Tornado-level tests of the HTTP surface with pytest-tornado (its `app`, `http_server`,
`http_client` fixtures): the handlers without any Socket.IO client."""
import asyncio

import orjson
import pytest

from rt.app import Appliance
from tests.support.appliance import API_KEY, settings_for


@pytest.fixture(autouse=True)
def asyncio_loop():
    """pytest-tornado's IOLoop() asks asyncio.get_event_loop(), which makes the policy
    create a loop that nobody closes; the next asyncio test replaces it and its garbage
    collection fails the run (ResourceWarning). Give it one that is closed here."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


@pytest.fixture
def appliance(tmp_path):
    return Appliance(settings_for(tmp_path))


@pytest.fixture
def app(appliance):
    return appliance.web_app()


def auth(key=API_KEY):
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.gen_test
async def test_health_and_readiness(http_client, base_url, appliance):
    await appliance.backend.start()
    resp = await http_client.fetch(base_url + "/healthz")
    assert resp.code == 200 and orjson.loads(resp.body) == {"status": "ok"}
    resp = await http_client.fetch(base_url + "/readyz")
    assert resp.code == 200
    await appliance.backend.stop()  # the store is gone: not ready, but still alive
    resp = await http_client.fetch(base_url + "/readyz", raise_error=False)
    assert resp.code == 503 and orjson.loads(resp.body)["status"] == "unavailable"
    resp = await http_client.fetch(base_url + "/healthz")
    assert resp.code == 200


@pytest.mark.gen_test
async def test_security_headers_and_json_errors(http_client, base_url, appliance):
    await appliance.backend.start()
    try:
        resp = await http_client.fetch(base_url + "/api/v1/presence", raise_error=False)
        assert resp.code == 401
        assert orjson.loads(resp.body)["error"] == "unauthorized"
        for name, value in (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                            ("Cache-Control", "no-store")):
            assert resp.headers[name] == value
        resp = await http_client.fetch(base_url + "/api/v1/presence", headers=auth())
        assert resp.code == 200 and orjson.loads(resp.body) == {"users": []}
        resp = await http_client.fetch(base_url + "/api/v1/users/x", method="PUT",
                                       body=b"[1,2", headers=auth(), raise_error=False)
        assert resp.code == 400 and orjson.loads(resp.body)["error"] == "bad_request"
        resp = await http_client.fetch(base_url + "/api/v1/users/x", method="PUT",
                                       body=b'{"name": "X"}', headers=auth("wrong"),
                                       raise_error=False)
        assert resp.code == 401
        assert await appliance.backend.store.get_user("x") is None  # refused: nothing changed
    finally:
        await appliance.backend.stop()


@pytest.mark.gen_test
async def test_store_failure_is_503_not_500(http_client, base_url, appliance):
    await appliance.backend.start()
    await appliance.backend.stop()
    resp = await http_client.fetch(base_url + "/api/v1/users/x", headers=auth(),
                                   raise_error=False)
    assert resp.code == 503 and orjson.loads(resp.body)["error"] == "unavailable"
