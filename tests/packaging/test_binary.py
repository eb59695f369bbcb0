"""The built one-file binary, smoke-tested by packaging/smoke.py (see there for the steps).

`make binary` builds dist/rt-appliance. Without it these tests skip; under CI=true with
RT_BINARY_TESTS=1 (the CI job that builds the binary) they fail instead.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "dist" / "rt-appliance"
BUILD_PYTHON = ROOT / "build" / "venv" / "bin" / "python"


def require_binary() -> None:
    if BINARY.is_file():
        return
    hint = f"{BINARY} not built: run `make binary` (bash packaging/build.sh)"
    if (os.environ.get("CI", "").lower() == "true"
            and os.environ.get("RT_BINARY_TESTS") == "1"):
        pytest.fail(f"CI=true and RT_BINARY_TESTS=1 but {hint}", pytrace=False)
    pytest.skip(hint)


@pytest.fixture(scope="module")
def smoke_run() -> subprocess.CompletedProcess:
    require_binary()
    return subprocess.run([sys.executable, str(ROOT / "packaging" / "smoke.py"), str(BINARY)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_smoke(smoke_run):
    assert smoke_run.returncode == 0, smoke_run.stdout + smoke_run.stderr
    assert "smoke test passed" in smoke_run.stdout


def test_notifies_systemd(smoke_run):
    match = re.search(r"sd_notify messages received: (.*)", smoke_run.stdout)
    assert match, smoke_run.stdout
    assert "READY=1" in match.group(1) and "STOPPING=1" in match.group(1)


def test_contents_and_glibc():
    """No test-only package inside; reports the glibc needed (build environment only)."""
    require_binary()
    if not BUILD_PYTHON.exists():
        pytest.skip("build/venv (PyInstaller) missing: run `make binary`")
    proc = subprocess.run([str(BUILD_PYTHON), str(ROOT / "packaging" / "inspect_binary.py"),
                           str(BINARY)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "oldest glibc the binary runs on:" in proc.stdout
