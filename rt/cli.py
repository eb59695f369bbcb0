"""Command line: serve | check-config | print-config | token | version (| document-host)."""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from . import __version__, config, install, logs, sdnotify

EXIT_FAILURE = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rt-appliance", description=(
        "Real-time server for AI chat applications (Socket.IO, backend HTTP API, Yjs)."))
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("--config", metavar="PATH",
                       help="INI file (default: /etc/rt-appliance/rt-appliance.ini if present)")
        # the flags override the INI file and the environment (highest precedence)
        p.add_argument("--host", help="listen address ([server] host)")
        p.add_argument("--port", help="listen port, 0 = any free port ([server] port)")
        p.add_argument("--data-dir", help="state directory ([state] data_dir)")
        return p

    with_config(sub.add_parser("serve", help="run the appliance"))
    with_config(sub.add_parser("check-config", help="validate the configuration and exit"))
    with_config(sub.add_parser("print-config", help="effective values with their source"))
    token = with_config(sub.add_parser("token", help="register a user if missing, print a token"))
    token.add_argument("--user", required=True)
    token.add_argument("--name")
    token.add_argument("--role", choices=("user", "admin"), default="user")
    token.add_argument("--expires", default="1h", help="e.g. 30m, 1h, 7d, 3600, never")
    sub.add_parser("version", help="print the version")
    # internal: `serve` starts it as a child that holds the Yjs documents' pycrdt copies
    sub.add_parser("document-host", help="(internal) the document process `serve` starts")
    install.add_parsers(sub)
    return parser


def _overrides(args) -> dict:
    flags = {("server", "host"): getattr(args, "host", None),
             ("server", "port"): getattr(args, "port", None),
             ("state", "data_dir"): getattr(args, "data_dir", None)}
    return {key: value for key, value in flags.items() if value is not None}


def _load(args):
    return config.load_settings(args.config, os.environ, _overrides(args))


def parse_duration(text: str) -> float | None:
    if text == "never":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not match:
        raise ValueError(f"bad duration {text!r} (use e.g. 30m, 1h, 7d, never)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"rt-appliance {__version__}")
        return 0
    if args.command in ("install", "uninstall"):
        return install.run(args)
    if args.command == "document-host":
        from .documents import host  # noqa: PLC0415 - the child needs nothing else

        return host.main()
    try:
        settings = _load(args)
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return config.EXIT_CONFIG
    if args.command == "check-config":
        print("configuration ok")
        return 0
    if args.command == "print-config":
        print(config.describe(settings))
        return 0
    if args.command == "token":
        return _token(settings, args)
    return _serve(settings, lambda: _load(args))


def _serve(settings, reload_settings) -> int:
    # the supervisor of workers imports none of the serving side: it only supervises
    from .keyfiles import resolve_secrets
    from .workers import supervisor
    from .workers.role import WorkerRole, die_with_parent

    role = WorkerRole.from_env(os.environ)
    logs.setup(settings.log.level, process=role.name if role is not None else "")
    count = supervisor.workers_to_run(settings, config.worker_count(settings.server.workers))
    if role is None and count > 1:
        # generated once, here: the workers then all read the same files
        settings = resolve_secrets(settings, lambda m: print(m, flush=True))
        return supervisor.serve(settings, count)
    if role is not None:
        die_with_parent()  # the one-file binary's Python child too, not only its bootloader
    from .app import Appliance
    from .backends.factory import BackendError
    from .core.errors import StoreError

    announce = (lambda m: print(f"{role.name}: {m}", flush=True)) if role is not None else (
        lambda m: print(m, flush=True))
    runner: Callable[[Coroutine[Any, Any, int]], int]
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, chosen at start not import
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run

    async def run() -> int:
        try:
            appliance = Appliance(settings, announce=announce, role=role)
            await appliance.start()
        except (BackendError, StoreError, OSError) as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        # Everything alive now (modules, the app, its services) lives as long as the
        # process. Frozen, the cyclic collector never walks it again: a full collection
        # over the ~70k start-up objects took 20 ms, a pause every client then waited out.
        gc.collect()
        gc.freeze()
        # Connections allocate in bursts (10k connects: 13 full collections, 31 % of the
        # loop's time); a larger first generation makes collections rarer, and a young one
        # still walks only what was allocated since the last (CPU per connect at 10k
        # connections 1.22 -> 0.86 ms, bench/results/2026-12-03-per-message.md).
        gc.set_threshold(20_000, 10, 10)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def reload() -> None:
            # an invalid file is refused as a whole: the running configuration stays
            sdnotify.reloading("reloading configuration")
            try:
                appliance.reload(reload_settings())
            except config.ConfigError as exc:
                logging.getLogger("rt.app").error(
                    "reload refused, running configuration kept: %s", exc)
            finally:
                sdnotify.ready(f"listening on port {appliance.port}")  # ends RELOADING=1

        loop.add_signal_handler(signal.SIGHUP, reload)
        await stop.wait()
        announce("stopping")
        await appliance.stop()
        return 0

    return runner(run())


def _token(settings, args) -> int:
    from .auth import TokenVerifier
    from .backends import User
    from .backends.factory import BackendError, build_backend
    from .core.errors import StoreError
    from .keyfiles import resolve_secrets

    try:
        expires = parse_duration(args.expires)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    settings = resolve_secrets(settings)

    async def run() -> int:
        try:
            backend = build_backend(settings)
            await backend.start()
        except (BackendError, StoreError, OSError) as exc:
            print(f"cannot open the store: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        try:
            user = await backend.store.get_user(args.user)
            if user is None:
                await backend.store.put_user(User(args.user, args.name or args.user, args.role))
                print(f"registered user {args.user!r} ({args.role})", file=sys.stderr)
        finally:
            await backend.stop()
        verifier = TokenVerifier(settings.auth.secret_key, tuple(settings.auth.algorithms))
        print(verifier.issue(args.user, expires))
        return 0

    return asyncio.run(run())
