#!/usr/bin/env bash
# Installs open-webui (unmodified, from PyPI) into its own cached virtual environment for the
# end-to-end tier: the wheel without its dependencies, then the slim requirements it ships
# (no torch, no local models). Prints the venv's path. Re-running reuses a finished install.
set -euo pipefail
VERSION="${OPENWEBUI_VERSION:-0.12.4}"
PYTHON="${PYTHON:-python3}"
CACHE="${RT_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rt-appliance/e2e}"
VENV="$CACHE/open-webui-$VERSION"
STAMP="$VENV/.installed"
if [ -f "$STAMP" ]; then echo "$VENV"; exit 0; fi

mkdir -p "$CACHE"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet --no-deps "open-webui==$VERSION" >&2
req="$("$VENV/bin/python" - <<'PY'
import importlib.metadata as md, pathlib
dist = md.distribution("open-webui")
print(next(pathlib.Path(dist.locate_file(f)) for f in dist.files if f.name == "requirements-slim.txt"))
PY
)"
"$VENV/bin/python" -m pip install --quiet -r "$req" >&2
touch "$STAMP"
echo "$VENV"
