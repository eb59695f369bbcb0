"""The built one-file binary, smoke-tested by packaging/smoke.py (see there for the steps).

`make binary` builds dist/rt-appliance (and the release file of the same bytes,
dist/rt-appliance-<version>-linux-amd64 with its .sha256) in the cached Debian 11 build
root. Without it these tests skip; under CI=true with RT_BINARY_TESTS=1 (the CI job that
builds the binary) they fail instead. The binary is smoke-tested here and, when the build
root is there and the tests run as root, inside it (glibc 2.31).
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "dist" / "rt-appliance"
BUILD_PYTHON = ROOT / "build" / "venv" / "bin" / "python"
TARGET_GLIBC = "2.28"
BUILD_ROOT = (Path(os.environ.get("RT_CACHE") or Path.home() / ".cache" / "rt-appliance")
              / "rootfs-bullseye-amd64")


def version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match
    return match.group(1)


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
                           str(BINARY), "--max-glibc", TARGET_GLIBC],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "oldest glibc the binary runs on:" in proc.stdout
    assert f"every ELF file runs on glibc {TARGET_GLIBC}" in proc.stdout


def test_release_file_and_checksum():
    require_binary()
    release = ROOT / "dist" / f"rt-appliance-{version()}-linux-amd64"
    assert release.is_file(), f"{release} missing: run `make binary`"
    assert release.read_bytes() == BINARY.read_bytes()
    digest, name = (ROOT / "dist" / f"{release.name}.sha256").read_text().split()
    assert name == release.name
    assert digest == hashlib.sha256(release.read_bytes()).hexdigest()
    assert release.stat().st_size <= 30 * 2**20, "the x86-64 binary must stay within 30 MiB"


def test_smoke_inside_the_old_glibc_build_root():
    """The same file inside the Debian 11 root it was built in: runs on glibc 2.31."""
    require_binary()
    if not (BUILD_ROOT / ".complete").exists() or os.geteuid() != 0:
        pytest.skip(f"needs root and the build root {BUILD_ROOT} (`make binary` makes it)")
    proc = subprocess.run([sys.executable, str(ROOT / "packaging" / "smoke.py"),
                           "--require-notify", "--root", str(BUILD_ROOT), str(BINARY)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke test passed inside" in proc.stdout
