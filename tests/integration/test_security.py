"""Security guarantees of SECURITY.md that no other test already shows."""
import hmac
import re
import signal

import pytest
from tornado.httpclient import AsyncHTTPClient

from rt import auth
from tests.support.appliance import API_KEY, SECRET, ApplianceProcess, Harness, running

pytestmark = pytest.mark.asyncio


def concrete(pattern: str) -> str:
    """A route pattern with every capture group filled in."""
    return re.sub(r"\([^)]*\)", "x1", pattern).rstrip("$").replace("/?", "").replace("\\.", ".")


async def test_every_backend_endpoint_needs_the_api_key(tmp_path):
    async with running(tmp_path) as h:
        patterns = []
        for group in h.app.web.default_router.rules:  # built-in routes and those added later
            patterns += [r.matcher.regex.pattern for r in group.target.rules]
        protected = [p for p in patterns if p.startswith(("/api/v1", "/admin"))]
        # the table really was read, including the routes services add at start
        assert {"/api/v1/emit$", "/api/v1/chats/([^/]+)/messages/([^/]+)$",
                "/admin/status\\.json$"} <= set(protected), protected
        for pattern in protected:
            path = concrete(pattern)
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                status, body = await h.api(method, path, {"x": 1}, key=None)
                assert status in (401, 405), (method, path, status, body)
                status, body = await h.api(method, path, {"x": 1}, key="wrong-key")
                assert status in (401, 405), (method, path, status, body)


async def test_api_key_is_compared_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)
    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.api_key_matches("k" * 20, "Bearer " + "k" * 20)
    assert not auth.api_key_matches("k" * 20, "Bearer " + "j" * 20)
    assert len(calls) == 2


async def test_secrets_and_tokens_never_reach_the_log(tmp_path):
    ini = "[log]\nlevel = debug\n[server]\nprotocol_logging = true\n"
    proc = ApplianceProcess(tmp_path, ini)
    proc.start()
    h = Harness(None, f"http://127.0.0.1:{proc.port}")
    try:
        tok = await h.user("a")
        c = await h.connect(tok)
        await c.call("user-join", {"auth": {"token": tok}}, timeout=5)
        # a client that puts its token in the query string, as old clients did
        await AsyncHTTPClient().fetch(
            f"{h.url}/ws/socket.io/?EIO=4&transport=polling&token={tok}", raise_error=False)
        await AsyncHTTPClient().fetch(f"{h.url}/ws/socket.io/?EIO=9&token={tok}",
                                      raise_error=False)  # a refused one is logged at INFO
        await h.api("GET", "/api/v1/presence")
        await h.api("GET", "/api/v1/presence", key="wrong-" + API_KEY)
        assert await h.refused("garbage." + tok) == "token_invalid"
    finally:
        assert proc.stop(signal.SIGTERM) == 0
        await h.close()
    log = proc.output[0]
    # debug and protocol logging were on: the log is as talkative as it gets
    assert "DEBUG rt.access" in log and "INFO rt.protocol" in log
    for secret in (SECRET, API_KEY, tok, tok.split(".")[2]):
        assert secret not in log
    assert "token=***" in log


async def test_cors_allow_list_is_enforced_for_browsers(tmp_path):
    ini = "[server]\ncors_allow_origin = https://chat.example.com\n"
    async with running(tmp_path, ini) as h:
        url = h.url + "/ws/socket.io/?EIO=4&transport=polling"
        ok = await AsyncHTTPClient().fetch(url, headers={"Origin": "https://chat.example.com"})
        assert ok.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
        bad = await AsyncHTTPClient().fetch(url, headers={"Origin": "https://evil.example"},
                                            raise_error=False)
        assert bad.code == 400 and "Access-Control-Allow-Origin" not in bad.headers
