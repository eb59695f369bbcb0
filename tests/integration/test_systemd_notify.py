"""The appliance speaks systemd's notify protocol: READY once listening, WATCHDOG pings
when the unit sets WatchdogSec, RELOADING/READY around SIGHUP, STOPPING on shutdown."""
import signal
import socket
import time

from tests.support.appliance import ApplianceProcess


def test_ready_watchdog_reload_stopping(tmp_path):
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(0.2)
    proc = ApplianceProcess(tmp_path, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    messages: list[str] = []

    def drain(until: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                messages.append(server.recv(4096).decode())
            except TimeoutError:
                continue
            if until in messages[-1]:
                return
        raise AssertionError(f"no {until!r} within {timeout} s; got {messages}")

    try:
        proc.start()
        drain("READY=1")
        drain("WATCHDOG=1")  # every 0.2 s (half the watchdog interval)
        proc.proc.send_signal(signal.SIGHUP)
        drain("RELOADING=1")
        drain("READY=1")
        assert proc.stop(signal.SIGTERM) == 0
        drain("STOPPING=1")
    finally:
        proc.kill()
        server.close()
    assert messages.index(next(m for m in messages if "READY=1" in m)) == 0
    assert sum("WATCHDOG=1" in m for m in messages) >= 1
