"""Fixtures of the end-to-end tier: one headless Chromium for the session, and one
deployment per mode ("alone" first, then "appliance"; pytest runs every test of one mode
before starting the other).

What the tier needs (redis-server, nginx, Debian's chromium, node with the npm test
packages, the cached open-webui venv) is checked first: a missing piece skips with its
install hint, except under CI=true, where it fails. `make e2e` installs all but the Debian
packages.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e import browser as browser_mod
from tests.e2e import nginx, openwebui
from tests.e2e.deployment import MODES, ROOT, start_deployment

ARTIFACTS = ROOT / "artifacts" / "e2e"


def require(missing: list[str]) -> None:
    if not missing:
        return
    reason = "the end-to-end tier needs " + "; ".join(missing)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def missing_components() -> list[str]:
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server (apt-get install redis-server)")
    if nginx.nginx_binary() is None:
        missing.append(nginx.HINT.split(": ", 1)[1])
    missing += browser_mod.missing()
    if openwebui.installed_venv() is None:
        missing.append("open-webui 0.12.4 in its cached venv (make e2e, or run "
                       "tests/e2e/install_openwebui.sh)")
    return missing


def artifacts_for(mode: str) -> Path:
    return ARTIFACTS / mode


@pytest.fixture(scope="session")
def browser():
    require(missing_components())
    root = Path(tempfile.mkdtemp(prefix="rt-e2e-browser-"))
    with browser_mod.Browser.start(root / "browser-driver.log") as b:
        yield b
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", params=MODES)
def deployment(request):
    require(missing_components())
    mode = request.param
    shots = artifacts_for(mode)
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    root = Path(tempfile.mkdtemp(prefix=f"rt-e2e-{mode}-"))
    try:
        dep = start_deployment(mode, root, openwebui.installed_venv())
    except BaseException:
        _keep_logs(root, shots)
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield dep
    finally:
        dep.stop()
        _keep_logs(root, shots)
        shutil.rmtree(root, ignore_errors=True)


def _keep_logs(root: Path, shots: Path) -> None:
    """Every process's log, copied beside the screenshots (the temp dir goes away)."""
    dest = shots / "logs"
    dest.mkdir(parents=True, exist_ok=True)
    for log in list(root.glob("logs/*.log")) + list(root.glob("nginx/*.log")) + list(
            root.glob("redis/**/*.log")):
        shutil.copy(log, dest / (log.name if log.parent.name == "logs"
                                 else f"{log.parent.name}-{log.name}"))
