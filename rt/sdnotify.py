"""A tiny sd_notify(3) client: tells systemd (Type=notify) how the service is doing.

    sdnotify.ready("listening on ...")   # READY=1 once the listener is bound
    sdnotify.stopping("draining ...")    # STOPPING=1 when the drain starts
    sdnotify.reloading() ... sdnotify.ready()   # around a SIGHUP reload
    sdnotify.watchdog()                  # WATCHDOG=1, every watchdog_interval() / 2 seconds
    sdnotify.status("42 sessions")       # free text shown by `systemctl status`

Every call is a no-op returning False when `NOTIFY_SOCKET` is unset (not under systemd, or
in tests), and never raises: a lost notification must not take the server down. The
socket path may be a file or, starting with '@', an abstract socket. Reads the environment
at call time (passed in explicitly by tests); importing this module does nothing.

The one-file binary runs as two processes: the bootloader (systemd's main PID, the one in
WATCHDOG_PID) and the Python child that sends these messages. So the unit has
`NotifyAccess=all`, and `watchdog_interval()` accepts WATCHDOG_PID naming the parent of a
frozen process.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Mapping

log = logging.getLogger("rt.app")


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path[0] == "@":
        return "\0" + path[1:]  # abstract namespace
    if path[0] != "/":
        return None  # systemd only ever passes absolute or abstract addresses (vsock aside)
    return path


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `FIELD=value` lines in one datagram; True when it was handed to the socket."""
    address = _address(os.environ if env is None else env)
    if address is None or not fields:
        return False
    message = "\n".join(fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # a full socket queue must not stall the event loop
            sock.sendto(message, address)
        return True
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", fields, exc)
        return False


def _status(text: str | None) -> tuple[str, ...]:
    return () if text is None else ("STATUS=" + " ".join(text.splitlines()),)


def ready(status: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    return notify("READY=1", *_status(status), env=env)


def stopping(status: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", *_status(status), env=env)


def reloading(status: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """RELOADING=1 (follow with ready() when the reload is done); MONOTONIC_USEC lets
    systemd >= 253 match it to the reload it asked for."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status), env=env)


def watchdog(env: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", env=env)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    return notify(*_status(text), env=env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd set (WatchdogSec=) in seconds, or None when the
    watchdog is off or meant for another process. Ping at half of it, as sd_watchdog_enabled(3)
    recommends."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            pid_n = int(pid)
        except ValueError:
            return None
        ours = {os.getpid()}
        if getattr(sys, "frozen", False):
            ours.add(os.getppid())  # the one-file bootloader is systemd's main PID
        if pid_n not in ours:
            return None
    return usec / 1e6
