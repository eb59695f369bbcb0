"""Logging set-up for the process (called by the CLI, never at import).

Under systemd (JOURNAL_STREAM is set) lines carry a `<N>` syslog priority prefix and no
timestamp, since journald adds its own; elsewhere they carry a timestamp.
"""
from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def setup(level: str, stream=None, process: str = "") -> None:
    """`process` names the process in every line ("worker 2"), when there are several."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    who = f"[{process}] " if process else ""
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter(f"{who}%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    # tornado.access logs every request at INFO: too loud for a real-time server
    logging.getLogger("tornado.access").setLevel(
        max(logging.WARNING, logging.getLogger().level))


_SECRET_PARAMS = {"token", "access_token", "auth", "api_key", "apikey", "key", "password",
                  "jwt"}


def scrub_uri(uri: str) -> str:
    """The request URI with the values of credential-like query parameters replaced, so a
    client that puts its token in the URL does not leak it into the logs."""
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    parts = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        parts.append(f"{name}=***" if eq and name.lower() in _SECRET_PARAMS else item)
    return f"{path}?{'&'.join(parts)}"


def log_request(handler) -> None:
    """Tornado's access log line, with the URI scrubbed (Application `log_function`)."""
    status = handler.get_status()
    if status < 400:
        level = logging.DEBUG  # every poll and API call at INFO would drown the log
    elif status < 500:
        level = logging.INFO
    else:
        level = logging.WARNING
    request = handler.request
    logging.getLogger("rt.access").log(
        level, "%d %s %s (%s) %.1fms", status, request.method, scrub_uri(request.uri),
        request.remote_ip, 1000.0 * request.request_time())
