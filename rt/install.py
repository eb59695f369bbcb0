"""`rt-appliance install [--prefix DIR]` and `rt-appliance uninstall [--prefix DIR] [--purge]`.

install puts, under PREFIX (default /; another directory is a staging root, like DESTDIR):

    usr/local/bin/rt-appliance                 the running one-file binary (a frozen build), or
                                               a launcher of this checkout (a source run)
    etc/systemd/system/rt-appliance.service    UNIT_TEXT (= systemd/rt-appliance.service)
    etc/rt-appliance/rt-appliance.ini          the defaults, only when absent: an edited file
                                               is never overwritten
    var/lib/rt-appliance                       the state directory

and prints what is left to do (service user, daemon-reload, enable --now). Running it again
is harmless. uninstall removes the binary and the unit and keeps configuration and data
unless --purge. Neither talks to systemd or creates users: that is for the operator, as
printed.
"""
from __future__ import annotations

import argparse
import contextlib
import grp
import os
import pwd
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__, config

SERVICE = "rt-appliance"
SERVICE_USER = "rt-appliance"  # User= and Group= of the unit

# The unit file, embedded so that a frozen binary can write it; a test keeps it equal to
# systemd/rt-appliance.service.
UNIT_TEXT = r"""# rt-appliance: the real-time server of an AI chat application (Socket.IO, backend HTTP
# API, Yjs documents), as the one-file binary /usr/local/bin/rt-appliance.
#
# Written by `rt-appliance install`, which overwrites it on the next install: put local
# changes in a drop-in (`systemctl edit rt-appliance`). Configuration is
# /etc/rt-appliance/rt-appliance.ini; state (SQLite file, generated secrets) is
# /var/lib/rt-appliance. Logs: `journalctl -u rt-appliance`.

[Unit]
Description=rt-appliance real-time server (Socket.IO, backend HTTP API, Yjs)
Wants=network-online.target
After=network-online.target

[Service]
# READY=1 once listening, STOPPING=1 when the drain starts, WATCHDOG=1 when WatchdogSec= is
# set. The one-file bootloader is the main PID and the Python process that sends the
# notifications is its child, so the notify socket must accept every process of the unit.
Type=notify
NotifyAccess=all
# Watchdog: uncomment to have systemd restart a hung event loop; the appliance pings every
# WatchdogSec/2.
#WatchdogSec=30s

User=rt-appliance
Group=rt-appliance
# The environment wins over the INI file: data_dir is set here, change it in a drop-in.
Environment=RT_DATA_DIR=/var/lib/rt-appliance
ExecStartPre=/usr/local/bin/rt-appliance check-config --config /etc/rt-appliance/rt-appliance.ini
ExecStart=/usr/local/bin/rt-appliance serve --config /etc/rt-appliance/rt-appliance.ini
# The bootloader forwards SIGHUP to the Python child, which reloads the INI file.
ExecReload=/bin/kill -HUP $MAINPID
SyslogIdentifier=rt-appliance

# A configuration error (exit 78, EX_CONFIG) is not retried: it needs an operator.
Restart=on-failure
RestartSec=2s
RestartPreventExitStatus=78

# SIGTERM goes to the main process only: the bootloader forwards it to its Python child,
# which drains within [server] shutdown_timeout (default 10 s). With [server] workers
# above one that child is the supervisor: it tells each worker to drain, and stops the
# broker the workers share only once they are done (a broker stopped by systemd at the
# same time would lose what the draining workers keep for their clients' recovery). After
# TimeoutStopSec everything left in the unit, a child orphaned by a killed bootloader
# included, gets SIGKILL. The drain deadline must stay below TimeoutStopSec.
KillMode=mixed
TimeoutStopSec=30s
# The sockets of the workers and of their broker, reachable by this service's user only.
RuntimeDirectory=rt-appliance
RuntimeDirectoryMode=0700

StateDirectory=rt-appliance
StateDirectoryMode=0750
ConfigurationDirectory=rt-appliance
ConfigurationDirectoryMode=0755
LimitNOFILE=65536
UMask=0077

# Hardening. The one-file binary unpacks itself into /tmp (PrivateTmp=) and runs from
# there, so /tmp must stay executable. Listening on a port below 1024 needs a drop-in
# with CapabilityBoundingSet=CAP_NET_BIND_SERVICE and AmbientCapabilities=CAP_NET_BIND_SERVICE.
ProtectSystem=strict
ProtectHome=true
PrivateTmp=true
PrivateDevices=true
PrivateMounts=true
NoNewPrivileges=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
ProtectProc=invisible
# ProcSubset=pid is left out: it hides /proc/stat, which process metrics read.
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=true
RestrictRealtime=true
RestrictSUIDSGID=true
LockPersonality=true
RemoveIPC=true
CapabilityBoundingSet=
AmbientCapabilities=
# Every system call of a smoke run (strace -f) is in @system-service; of ~@privileged,
# only SQLite's fchown of its -wal/-shm files appears, and SQLite does that only as root.
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
# Tolerated by this build (CPython 3.11, no JIT): the whole smoke test passes under the
# kernel's PR_SET_MDWE, and strace shows no W+X mapping nor mprotect(PROT_EXEC). A Python
# with a JIT (3.13+ built with it) or ctypes/cffi callbacks can fail with EPERM here:
# remove this line in a drop-in if the log shows such an error.
MemoryDenyWriteExecute=true

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Layout:
    """Where everything goes; `target` paths are as seen on the machine that runs it."""

    prefix: Path

    BINARY = "/usr/local/bin/rt-appliance"
    UNIT = "/etc/systemd/system/rt-appliance.service"
    CONFIG_DIR = "/etc/rt-appliance"
    CONFIG = "/etc/rt-appliance/rt-appliance.ini"
    STATE_DIR = "/var/lib/rt-appliance"

    def at(self, target: str) -> Path:
        return self.prefix / target.lstrip("/")

    @property
    def is_root_fs(self) -> bool:
        return self.prefix.resolve() == Path("/")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` in one step: a running binary is never half-written ('text file busy'
    cannot happen, the old inode lives on until its process ends)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def launcher_text() -> str:
    """A /bin/sh launcher that runs this checkout with the current interpreter (venv)."""
    root = Path(__file__).resolve().parent.parent
    entry = root / "appliance.py"
    if entry.is_file():
        command = f"{shlex.quote(sys.executable)} {shlex.quote(str(entry))}"
    else:  # installed as a package without the checkout's entry point
        command = (f"{shlex.quote(sys.executable)} -c "
                   f"{shlex.quote('import sys; from rt.cli import main; sys.exit(main())')}")
    return ("#!/bin/sh\n"
            f"# rt-appliance {__version__} launcher written by `install` from a source run;\n"
            "# `make binary` builds the one-file executable that production should use.\n"
            f'exec {command} "$@"\n')


def _frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def _install_binary(layout: Layout, say: Callable[[str], None]) -> list[str]:
    target = layout.at(Layout.BINARY)
    notes: list[str] = []
    if _frozen():
        source = Path(sys.executable)
        if target.exists() and os.path.samefile(source, target):
            say(f"binary   {target} (already this file)")
            return notes
        _write_atomic(target, source.read_bytes(), 0o755)
        say(f"binary   {target} (copied from {source})")
    else:
        _write_atomic(target, launcher_text().encode(), 0o755)
        root = Path(__file__).resolve().parent.parent
        say(f"binary   {target} (launcher of the checkout {root})")
        if _under_protected_home(root):
            notes.append(f"the checkout {root} is hidden from the service by ProtectHome=true: "
                         "install the one-file binary (`make binary`, then "
                         "`dist/rt-appliance install`) for systemd")
    return notes


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def install(prefix: str | os.PathLike = "/", say: Callable[[str], None] = print) -> int:
    layout = Layout(Path(prefix))
    real = layout.is_root_fs
    as_root = os.geteuid() == 0
    say(f"installing rt-appliance {__version__}"
        + ("" if real else f" into {layout.prefix} (paths below as on the target)"))
    notes = _install_binary(layout, say)

    _write_atomic(layout.at(Layout.UNIT), UNIT_TEXT.encode(), 0o644)
    say(f"unit     {layout.at(Layout.UNIT)}")

    config_dir = layout.at(Layout.CONFIG_DIR)
    config_dir.mkdir(parents=True, exist_ok=True)
    ini = layout.at(Layout.CONFIG)
    config_needs_group = False
    if ini.exists():
        say(f"config   {ini} (kept: it exists)")
    else:
        # 0640: an operator may put secret_key / api_key in it; the service reads it
        # through its group
        _write_atomic(ini, config.render_default_ini().encode(), 0o640)
        if real and as_root and _group_exists(SERVICE_USER):
            os.chown(ini, 0, grp.getgrnam(SERVICE_USER).gr_gid)
        else:
            config_needs_group = True
        say(f"config   {ini} (created from the defaults)")

    state = layout.at(Layout.STATE_DIR)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o750)
    if real and as_root and _user_exists(SERVICE_USER):
        user = pwd.getpwnam(SERVICE_USER)
        os.chown(state, user.pw_uid, user.pw_gid)
    say(f"state    {state}")

    steps = []
    if not _user_exists(SERVICE_USER) or not real:
        steps.append(f"id {SERVICE_USER} >/dev/null 2>&1 || useradd --system --user-group "
                     f"--home-dir {Layout.STATE_DIR} --no-create-home "
                     f"--shell /usr/sbin/nologin {SERVICE_USER}")
    if config_needs_group:
        steps.append(f"chgrp {SERVICE_USER} {Layout.CONFIG}")
    steps += [
        f"${{EDITOR:-vi}} {Layout.CONFIG}   # host, port, [auth] secret_key = the backend's "
        "WEBUI_SECRET_KEY",
        "systemctl daemon-reload",
        f"systemctl enable --now {SERVICE}",
        f"systemctl status {SERVICE}; journalctl -u {SERVICE} -f",
        f"cat {Layout.STATE_DIR}/api_key   # the backend's API key, generated on first start",
    ]
    for note in notes:
        say(f"note: {note}")
    say("next steps (as root):")
    for step in steps:
        say(f"  {step}")
    return 0


def uninstall(prefix: str | os.PathLike = "/", purge: bool = False,
              say: Callable[[str], None] = print) -> int:
    layout = Layout(Path(prefix))
    say("uninstalling rt-appliance" + ("" if layout.is_root_fs else f" from {layout.prefix}"))
    for _what, target in (("binary", Layout.BINARY), ("unit", Layout.UNIT)):
        path = layout.at(target)
        if path.exists() or path.is_symlink():
            path.unlink()
            say(f"removed  {path}")
        else:
            say(f"absent   {path}")
    for target in (Layout.CONFIG_DIR, Layout.STATE_DIR):
        path = layout.at(target)
        if not path.exists():
            continue
        if purge:
            shutil.rmtree(path)
            say(f"purged   {path}")
        else:
            say(f"kept     {path} (--purge removes it)")
    say("then (as root):")
    say("  systemctl daemon-reload   # after `systemctl disable --now rt-appliance`, if it ran")
    if purge and (_user_exists(SERVICE_USER) or not layout.is_root_fs):
        say(f"  userdel {SERVICE_USER}")
    return 0


# ---------------------------------------------------------------------------- command line
def add_parsers(sub) -> None:
    """Register `install` and `uninstall` on the CLI's subparsers."""
    p = sub.add_parser("install", help="install the binary, systemd unit, config and state dir")
    p.add_argument("--prefix", default="/", help="root to install under (default /)")
    p = sub.add_parser("uninstall", help="remove the binary and unit (keeps config and data)")
    p.add_argument("--prefix", default="/", help="root it was installed under (default /)")
    p.add_argument("--purge", action="store_true",
                   help="also delete the configuration and the state directory")


def run(args: argparse.Namespace) -> int:
    """Run `install` or `uninstall`; 1 with a message when a file cannot be written."""
    try:
        if args.command == "install":
            return install(args.prefix)
        return uninstall(args.prefix, args.purge)
    except OSError as exc:
        hint = " (run as root, or pass --prefix DIR)" if isinstance(exc, PermissionError) else ""
        print(f"{args.command}: {exc}{hint}", file=sys.stderr)
        return 1


# what systemd's ProtectHome=true hides: /home, /root and /run/user
_PROTECTED_HOMES = (("home",), ("root",), ("run", "user"))


def _under_protected_home(path: Path) -> bool:
    parts = path.parts[1:]  # without the leading "/"
    return any(parts[:len(home)] == home for home in _PROTECTED_HOMES)
