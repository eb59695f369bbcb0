"""The appliance as a process: command line, restarts, graceful stop."""
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import socketio

from tests.support.appliance import API_KEY, ROOT, SECRET, ApplianceProcess, Harness

pytestmark = pytest.mark.asyncio


def cli(*args, env=None, cwd=None):
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("RT_", "WEBSOCKET_", "WEBUI_", "REDIS_", "CORS_", "ENABLE_"))}
    environ.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "appliance.py"), *args], cwd=cwd or ROOT,
                          env=environ, capture_output=True, text=True, timeout=60)


async def test_cli_commands_and_exit_codes(tmp_path):
    assert cli("version").stdout.startswith("rt-appliance ")
    ini = tmp_path / "rt.ini"
    ini.write_text("[server]\nport = 9000\n")
    out = cli("check-config", "--config", str(ini))
    assert out.returncode == 0, out.stderr
    # unparsable value: exit 78, names the file and line
    ini.write_text("[server]\nport = 9000\nping_interval = soon\n")
    out = cli("check-config", "--config", str(ini))
    assert out.returncode == 78 and f"{ini}:3 [server] ping_interval" in out.stderr
    out = cli("serve", "--config", str(ini))
    assert out.returncode == 78
    out = cli("check-config", "--config", str(tmp_path / "missing.ini"))
    assert out.returncode == 78
    ini.write_text("[server]\nport = 9000\n")
    out = cli("check-config", "--config", str(ini),
              env={"WEBSOCKET_SERVER_PING_TIMEOUT": "-1"})
    assert out.returncode == 78 and "env WEBSOCKET_SERVER_PING_TIMEOUT" in out.stderr
    out = cli("serve", "--config", str(ini), "--port", "http")
    assert out.returncode == 78 and "flag --port" in out.stderr
    # print-config: sources shown, secrets redacted
    out = cli("print-config", "--config", str(ini), "--data-dir", str(tmp_path / "d"),
              env={"WEBUI_SECRET_KEY": "super-secret-value", "WEBSOCKET_SERVER_PING_INTERVAL": "2.5"})
    assert out.returncode == 0
    assert "super-secret-value" not in out.stdout
    assert f"{ini}:2" in out.stdout and "env WEBSOCKET_SERVER_PING_INTERVAL" in out.stdout
    assert "2.5" in out.stdout


async def test_token_command_registers_user_and_secrets_are_private(tmp_path):
    ini = tmp_path / "rt.ini"
    ini.write_text(f"[state]\ndata_dir = {tmp_path / 'data'}\n")
    out = cli("token", "--config", str(ini), "--user", "alice", "--name", "Alice",
              "--role", "admin", "--expires", "2h")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    for name in ("secret_key", "api_key"):
        path = tmp_path / "data" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the token opens a connection to an appliance on the same data dir
    proc = ApplianceProcess(tmp_path, env={"WEBUI_SECRET_KEY": "", "RT_API_KEY": ""})
    del proc.env["WEBUI_SECRET_KEY"], proc.env["RT_API_KEY"]
    proc.start()
    try:
        # the appliance found the secrets the token command generated, and says where
        assert f"using secret_key in {tmp_path / 'data' / 'secret_key'} (mode 0600)" in proc.output[0]
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(f"http://127.0.0.1:{proc.port}", socketio_path="/ws/socket.io",
                             transports=["websocket"], auth={"token": token}, wait_timeout=5)
        assert await client.call("user-join", {}, timeout=5) == {"id": "alice", "name": "Alice"}
        await client.disconnect()
    finally:
        assert proc.stop() == 0


async def test_restart_keeps_directory_markers_last_active(tmp_path):
    ini = "[state]\nlast_active_flush_interval = 3600\n"  # only the stop flush writes it
    proc = ApplianceProcess(tmp_path, ini)
    proc.start()
    h = Harness(None, f"http://127.0.0.1:{proc.port}")
    try:
        await h.user("u1", "Una")
        assert (await h.api("PUT", "/api/v1/channels/ch", {"members": ["u1"]}))[0] == 200
        assert (await h.api("PUT", "/api/v1/notes/n1", {"owner": "u1", "read": ["u2"]}))[0] == 200
        client = await h.connect(h.token("u1"))
        await client.call("user-join", {}, timeout=5)
        await client.emit("heartbeat", {})
        assert await client.call("events:channel", {"channel_id": "ch",
                                                    "data": {"type": "last_read_at"}}, timeout=5) is None
        await client.call("events:chat", {"chat_id": "c1", "data": {"type": "last_read_at"}},
                          timeout=5)
        status, live = await h.api("GET", "/api/v1/users/u1")
        assert live["last_active_at"]
        # graceful stop: the client is told, the pending last-active write is flushed
        started = time.monotonic()
        assert proc.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
        for _ in range(100):  # the close frame is read once the loop runs again
            if not client.connected:
                break
            await client.sleep(0.05)
        assert not client.connected
    finally:
        proc.kill()
    proc2 = ApplianceProcess(tmp_path)
    proc2.start()
    try:
        h.url = f"http://127.0.0.1:{proc2.port}"
        status, body = await h.api("GET", "/api/v1/users/u1")
        assert status == 200 and body["name"] == "Una"
        assert body["last_active_at"] == pytest.approx(live["last_active_at"], abs=0.01)
        assert (await h.api("GET", "/api/v1/channels/ch"))[1]["members"] == ["u1"]
        assert (await h.api("GET", "/api/v1/notes/n1"))[1]["read"] == ["u2"]
        assert (await h.api("GET", "/api/v1/channels/ch/members/u1"))[1]["last_read_at"]
        assert (await h.api("GET", "/api/v1/chats/c1/read/u1"))[1]["last_read_at"]
    finally:
        assert proc2.stop(signal.SIGINT) == 0
        await h.close()


async def test_data_dir_unusable_fails_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = cli("serve", "--port", "0", "--data-dir", str(blocker / "sub"),
              env={"WEBUI_SECRET_KEY": SECRET, "RT_API_KEY": API_KEY})
    assert out.returncode == 1 and "cannot start" in out.stderr
