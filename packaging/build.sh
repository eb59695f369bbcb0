#!/usr/bin/env bash
# Builds the one-file binary dist/rt-appliance and smoke-tests it (`make binary`).
#
#   1. a clean virtual environment in build/venv: the project and its pinned runtime
#      dependencies (constraints.txt), no test extras, plus the pinned PyInstaller;
#   2. PyInstaller with packaging/rt-appliance.spec (one file; aiohttp, fakeredis and the
#      test packages excluded);
#   3. packaging/inspect_binary.py: fails if a test-only package got in, reports the
#      newest glibc symbol version needed (build/rt-appliance.report.txt);
#   4. packaging/smoke.py against the built file, run from a second environment
#      (build/smoke-venv) holding only the client side: python-socketio + websocket-client.
#
# Environment: PYTHON (interpreter to build with, default python3; its glibc is the
# binary's minimum), SKIP_SMOKE=1 to build only.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=build/venv
SMOKE_VENV=build/smoke-venv
PIP_FLAGS=(--quiet --disable-pip-version-check)

say() { printf '==> %s\n' "$*"; }

command -v objdump >/dev/null || { echo "objdump missing: apt-get install -y binutils" >&2; exit 1; }
# PyInstaller bundles libpython: a pyenv/source build must have it (--enable-shared), else
# PyInstaller may pick a distribution's libpython of another patch release. A distribution
# Python (prefix /usr) is fine with its libpythonX.Y package installed.
"$PYTHON" - <<'PY' || exit 1
import sys, sysconfig
if not sysconfig.get_config_var("Py_ENABLE_SHARED") and sys.base_prefix != "/usr":
    sys.exit(f"{sys.executable} has no shared libpython: rebuild it with --enable-shared "
             "(pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared) or set PYTHON=")
PY

say "clean build environment in $VENV ($("$PYTHON" -V))"
# setuptools builds the project in-tree under build/lib and build/bdist.*: stale copies
# there must not reach the wheel
rm -rf "$VENV" build/pyinstaller build/lib build/bdist.* dist/rt-appliance
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -c constraints.txt .
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -c constraints.txt -r packaging/build-requirements.txt
rm -rf build/lib build/bdist.*
"$VENV/bin/python" - <<'PY'
import importlib.util, sys
present = [m for m in ("aiohttp", "fakeredis", "pytest", "hypothesis", "y_py", "requests")
           if importlib.util.find_spec(m)]
if present:
    sys.exit(f"test-only packages in the build environment: {present}")
PY

say "PyInstaller"
"$VENV/bin/python" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath dist --workpath build/pyinstaller packaging/rt-appliance.spec

say "contents and glibc"
"$VENV/bin/python" packaging/inspect_binary.py dist/rt-appliance --report build/rt-appliance.report.txt

if [[ "${SKIP_SMOKE:-}" == 1 ]]; then
  say "smoke test skipped (SKIP_SMOKE=1)"
  exit 0
fi
say "smoke test"
if [[ ! -x "$SMOKE_VENV/bin/python" ]] || ! "$SMOKE_VENV/bin/python" -c 'import socketio, websocket, requests' 2>/dev/null; then
  rm -rf "$SMOKE_VENV"
  "$PYTHON" -m venv "$SMOKE_VENV"
  "$SMOKE_VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -c constraints.txt \
    python-socketio websocket-client requests
fi
"$SMOKE_VENV/bin/python" packaging/smoke.py --require-notify dist/rt-appliance
