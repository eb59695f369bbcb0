"""The operator's day: metrics, status page data, reload, drain (issue 6 parts)."""
import asyncio
import base64
import logging
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from tests.support.appliance import API_KEY, ApplianceProcess, Harness, running, settings_for

pytestmark = pytest.mark.asyncio


async def scrape(h, url=None):
    resp = await AsyncHTTPClient().fetch(url or h.url + "/metrics", raise_error=False)
    assert resp.code == 200, resp.code
    return {f.name: f for f in text_string_to_metric_families(resp.body.decode())}


def sample(families, name, **labels):
    for s in families[name].samples:
        if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith("_created"):
            return s.value
    raise AssertionError(f"no sample {name} {labels}")


async def test_metrics_exposition(tmp_path):
    async with running(tmp_path) as h:
        tok = await h.user("a")
        c1 = await h.connect(tok)
        await h.connect(tok, transports=("polling",))
        await c1.call("user-join", {}, timeout=5)
        await c1.call("join-note", {"note_id": 5}, timeout=5)  # a bad_request
        await h.api("POST", "/api/v1/emit", {"event": "events", "data": 1, "to": {"users": ["a"]}})
        fams = await scrape(h)
        assert sample(fams, "rt_connections", transport="websocket") == 1
        assert sample(fams, "rt_connections", transport="polling") == 1
        assert sample(fams, "rt_sessions") == 2
        assert sample(fams, "rt_users_online") == 1
        assert sample(fams, "rt_events_in", event="user-join") == 1
        assert sample(fams, "rt_events_out", event="events") == 1
        assert sample(fams, "rt_errors", code="bad_request") == 1
        assert sample(fams, "rt_api_requests", handler="EmitHandler", code="202") == 1
        assert sample(fams, "rt_store_up") == 1
        assert sample(fams, "rt_documents") == 0
        assert "rt_event_loop_lag_seconds" in fams and "rt_rooms" in fams
        assert sample(fams, "rt_build_info", backend="sqlite") == 1


async def test_metrics_on_a_separate_listener(tmp_path):
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with running(tmp_path, f"[server]\nmetrics_listen = 127.0.0.1:{port}\n") as h:
        assert (await h.api("GET", "/metrics", key=None))[0] == 404
        fams = await scrape(h, f"http://127.0.0.1:{port}/metrics")
        assert "rt_connections" in fams


async def test_admin_requires_the_key_and_reports_live_figures(tmp_path):
    async with running(tmp_path) as h:
        status, body = await h.api("GET", "/admin/status.json", key=None)
        assert status == 401
        resp = await AsyncHTTPClient().fetch(h.url + "/admin", raise_error=False)
        assert resp.code == 401 and "Basic" in resp.headers["WWW-Authenticate"]
        tok = await h.user("a")
        await h.api("PUT", "/api/v1/channels/ch", {"members": ["a"]})
        c = await h.connect(tok)
        await c.call("user-join", {}, timeout=5)
        status, body = await h.api("GET", "/admin/status.json")
        assert status == 200
        assert body["connections"]["websocket"] == 1 and body["sessions"] == 1
        assert body["users"] == [{"id": "a", "sessions": 1}]
        assert body["channels"] == [{"id": "ch", "members": 1}]
        assert body["health"] == {"store": True}
        basic = base64.b64encode(f"admin:{API_KEY}".encode()).decode()
        resp = await AsyncHTTPClient().fetch(h.url + "/admin",
                                             headers={"Authorization": f"Basic {basic}"})
        assert b"rt-appliance" in resp.body and resp.headers["Content-Security-Policy"]


async def test_reload_applies_live_options_and_names_the_rest(tmp_path):
    root_level = logging.getLogger().level
    async with running(tmp_path) as h:
        new = settings_for(tmp_path, "[server]\nping_interval = 1.5\nwebsocket_compression = true\n"
                           "[limits]\ntyping_per_second = 1\n[log]\nlevel = debug\n",
                           env={"RT_API_KEY": "rotated-key-123456"})
        applied, restart = h.app.reload(new)
        assert {"server.ping_interval", "limits.typing_per_second", "auth.api_key",
                "log.level"} <= set(applied)
        assert restart == ["server.websocket_compression"]
        assert h.app.settings.server.websocket_compression is False  # kept: needs a restart
        assert logging.getLogger().level == logging.DEBUG
        logging.getLogger().setLevel(root_level)
        assert h.app.sio.engine.options.ping_interval == 1.5
        assert (await h.api("GET", "/api/v1/presence"))[0] == 401
        assert (await h.api("GET", "/api/v1/presence", key="rotated-key-123456"))[0] == 200
        resp = await AsyncHTTPClient().fetch(h.url + "/ws/socket.io/?EIO=4&transport=polling")
        assert b'"pingInterval":1500' in resp.body


async def test_sighup_reload_good_and_bad_file(tmp_path):
    proc = ApplianceProcess(tmp_path, "[limits]\ncall_timeout_max = 60\n")
    proc.start()
    h = Harness(None, f"http://127.0.0.1:{proc.port}")
    handshake = h.url + "/ws/socket.io/?EIO=4&transport=polling"
    evil = {"Origin": "https://evil.example"}
    try:
        c = await h.connect(await h.user("a"))
        assert (await AsyncHTTPClient().fetch(handshake, headers=evil)).code == 200
        # a bad file is refused whole; the process and its connections carry on
        proc.config.write_text("[server]\ncors_allow_origin = https://good.example\n"
                               "[limits]\ncall_timeout_max = nonsense\n")
        proc.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert proc.proc.poll() is None and c.connected
        assert (await AsyncHTTPClient().fetch(handshake, headers=evil)).code == 200
        # a good file: the new CORS allow-list applies at once, without dropping anyone
        proc.config.write_text("[server]\ncors_allow_origin = https://good.example\n")
        proc.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        resp = await AsyncHTTPClient().fetch(handshake, headers=evil, raise_error=False)
        assert resp.code == 400
        ok = await AsyncHTTPClient().fetch(handshake, headers={"Origin": "https://good.example"})
        assert ok.code == 200
        assert proc.proc.poll() is None and c.connected
    finally:
        assert proc.stop() == 0
        await h.close()
    log = "".join(proc.output)
    assert "reload refused" in log and "call_timeout_max" in log
    assert "reloaded: server.cors_allow_origin" in log


async def test_drain_is_paced(tmp_path):
    async with running(tmp_path, "[server]\ndrain_rate = 40\n") as h:
        tok = await h.user("a")
        clients = [await h.connect(tok) for _ in range(20)]
        gone: dict[int, float] = {}
        for i, c in enumerate(clients):
            c.on("disconnect", lambda *a, i=i: gone.setdefault(i, time.monotonic()))
        started = time.monotonic()
        await h.app.drain_sessions(h.app.settings.server.drain_rate)
        for _ in range(100):
            if len(gone) == 20:
                break
            await asyncio.sleep(0.05)
        assert len(gone) == 20
        spread = max(gone.values()) - min(gone.values())
        # 20 sessions at 40/s are spread over about half a second, not dropped at once
        assert spread >= 0.3, spread
        assert min(gone.values()) - started < 0.3
