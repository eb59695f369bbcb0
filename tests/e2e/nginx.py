"""Debian's nginx in front of open-webui, from the site block in nginx-site.conf.

The site block is the one the README recommends; this module only fills in its addresses
and wraps it in a main configuration that keeps everything nginx writes (pid file, logs,
temporary files) in the test's directory, so that it runs beside any system nginx.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.e2e.processes import Process, wait_http

SITE = Path(__file__).resolve().parent / "nginx-site.conf"
HINT = "nginx not found: install it (apt-get install nginx-light)"
START_TIMEOUT = 15.0


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def render_site(listen: int, openwebui: str, socket_servers: list[str]) -> str:
    """The site block for one mode: `socket_servers` are the appliance nodes, or open-webui
    itself when it serves its own socket ("alone")."""
    servers = "\n".join(f"    server {s};" for s in socket_servers)
    return (SITE.read_text().replace("{{listen}}", f"127.0.0.1:{listen}")
            .replace("{{openwebui}}", openwebui).replace("{{appliance_servers}}", servers))


def main_conf(root: Path, site: Path) -> str:
    # as root, nginx hands its workers to `nobody`, who may not enter the test's directory
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {root / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}daemon off;\nworker_processes 1;\npid {root / 'nginx.pid'};\n"
            f"error_log {root / 'error.log'} notice;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log {root / 'access.log'};\n{temp}\n"
            f"    include {site};\n}}\n")


def start_nginx(root: Path, listen: int, openwebui: str, socket_servers: list[str],
                log: Path) -> Process:
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError(HINT)
    root.mkdir(parents=True, exist_ok=True)
    site = root / "site.conf"
    site.write_text(render_site(listen, openwebui, socket_servers))
    conf = root / "nginx.conf"
    conf.write_text(main_conf(root, site))
    # -e: the error log used before the configuration is read (else /var/log/nginx)
    proc = Process("nginx", [binary, "-c", str(conf), "-p", str(root),
                             "-e", str(root / "error.log")], log).start()
    wait_http(f"http://127.0.0.1:{listen}/health", START_TIMEOUT, proc)
    return proc
