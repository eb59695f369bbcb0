"""The sd_notify client against a real AF_UNIX datagram socket standing in for systemd."""
from __future__ import annotations

import os
import secrets
import socket
import sys

import pytest

from rt import sdnotify


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    """(NOTIFY_SOCKET value, receiving socket): a file socket and an abstract one ('@')."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(2)
    if request.param == "path":
        path = str(tmp_path / "notify")
        sock.bind(path)
        address = path
    else:
        name = f"rt-test-notify-{os.getpid()}-{secrets.token_hex(4)}"
        sock.bind("\0" + name)
        address = "@" + name
    yield address, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_watchdog_stopping_reach_the_socket(notify_socket):
    address, sock = notify_socket
    env = {"NOTIFY_SOCKET": address}
    assert sdnotify.ready("listening on http://127.0.0.1:8080", env=env)
    assert received(sock) == ["READY=1", "STATUS=listening on http://127.0.0.1:8080"]
    assert sdnotify.watchdog(env=env)
    assert received(sock) == ["WATCHDOG=1"]
    assert sdnotify.status("3 sessions\nsecond line", env=env)
    assert received(sock) == ["STATUS=3 sessions second line"]
    assert sdnotify.stopping(env=env)
    assert received(sock) == ["STOPPING=1"]


def test_reloading_carries_the_monotonic_time(notify_socket):
    address, sock = notify_socket
    assert sdnotify.reloading(env={"NOTIFY_SOCKET": address})
    fields = received(sock)
    assert fields[0] == "RELOADING=1"
    assert fields[1].startswith("MONOTONIC_USEC=") and int(fields[1].split("=")[1]) > 0


def test_reads_the_process_environment(notify_socket, monkeypatch):
    address, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sdnotify.ready()
    assert received(sock) == ["READY=1"]


def test_no_op_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog(env={}) is False
    assert sdnotify.stopping(env={"NOTIFY_SOCKET": ""}) is False
    assert sdnotify.ready(env={"NOTIFY_SOCKET": "relative/path"}) is False


def test_a_dead_socket_never_raises(tmp_path):
    assert sdnotify.ready(env={"NOTIFY_SOCKET": str(tmp_path / "missing")}) is False
    assert sdnotify.watchdog(env={"NOTIFY_SOCKET": "@rt-test-nobody-listens"}) is False


def test_watchdog_interval():
    pid = str(os.getpid())
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}) is None
    # meant for another process: the parent, unless we are the child of a one-file bootloader
    parent = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getppid())}
    assert sdnotify.watchdog_interval(parent) is None


def test_watchdog_interval_frozen_child_accepts_the_bootloader(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    parent = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getppid())}
    assert sdnotify.watchdog_interval(parent) == 1.0
    stranger = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert os.getppid() == 1 or sdnotify.watchdog_interval(stranger) is None
