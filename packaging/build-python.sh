#!/usr/bin/env bash
# Builds (once) the CPython 3.11 that the binary bundles, inside the build root file system
# of one architecture (packaging/rootfs.sh), so it and its extension modules link against
# that root's old glibc.
#
#   bash packaging/build-python.sh amd64|arm64     -> prints ROOT:/opt/python3.11/bin/python3.11
#
# Source: Debian 12's python3.11 source package, fetched with apt-get source from
# deb.debian.org (apt checks every file against the signed Sources index, with Debian's
# archive keyring); the upstream tarball plus Debian's security and crash fixes (the
# series from shutdown-deadlock.diff on; the earlier patches change Debian's file layout
# and build, which a self-contained --prefix build does not want). Built shared
# (PyInstaller bundles libpython), without debug symbols, with glibc-compat.h forced in.
# Cached in the root under /opt/python3.11 with a stamp naming this script's inputs.
# RT_PYTHON_REBUILD=1 builds anew (e.g. to take a newer Debian security release).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:?usage: build-python.sh amd64|arm64}
CACHE=${RT_CACHE:-$HOME/.cache/rt-appliance}
PREFIX=/opt/python3.11
say() { printf '==> %s\n' "$*" >&2; }

ROOT=$(bash packaging/rootfs.sh "$ARCH")
KEY=$(cat packaging/build-python.sh packaging/glibc-compat.h | sha256sum | cut -c1-16)
STAMP=$ROOT$PREFIX/.built-$KEY
if [[ -e $STAMP && "${RT_PYTHON_REBUILD:-}" != 1 ]]; then
  say "CPython $(cat "$STAMP") in $ROOT$PREFIX (cached)"
  echo "$ROOT:$PREFIX/bin/python3.11"
  exit 0
fi

# --- the source package, with a private apt state (the machine's sources are untouched)
APT=$CACHE/apt-src
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE/src"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -e $KEYRING ]] || { apt-get update -qq && apt-get install -y -qq debian-archive-keyring; } >&2
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cat >"$APT/sources.list" <<SRC
deb-src [signed-by=$KEYRING] $MIRROR bookworm main
deb-src [signed-by=$KEYRING] $MIRROR bookworm-updates main
deb-src [signed-by=$KEYRING] ${MIRROR%/debian}/debian-security bookworm-security main
SRC
APT_OPTS=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o APT::Sandbox::User=root)
say "python3.11 source package (Debian 12)"
apt-get "${APT_OPTS[@]}" -qq update >&2
# newest first; a version the index names may be missing from the pool for a while
mapfile -t versions < <(apt-cache "${APT_OPTS[@]}" showsrc python3.11 | sed -n 's/^Version: //p' \
                         | sort -u | sort -r -V)
got=
for v in "${versions[@]}"; do
  if (cd "$CACHE/src" && apt-get "${APT_OPTS[@]}" -qq source --download-only "python3.11=$v" >/dev/null 2>&1); then
    got=$v
    break
  fi
  say "python3.11 $v not downloadable, trying an older one"
done
[[ -n $got ]] || { echo "no python3.11 source package could be fetched" >&2; exit 1; }
upstream=${got%%-*}
say "python3.11 $got (verified against the signed Sources index)"

SRC=$ROOT/usr/src/python
rm -rf "$SRC"
mkdir -p "$SRC"
tar -xzf "$CACHE/src/python3.11_$upstream.orig.tar.gz" -C "$SRC"
tar -xJf "$CACHE/src/python3.11_$got.debian.tar.xz" -C "$SRC"
n=0
while read -r patch; do
  patch -d "$SRC/Python-$upstream" -p1 -s -N <"$SRC/debian/patches/$patch" >&2
  n=$((n + 1))
done < <(sed -n '/^shutdown-deadlock/,$p' "$SRC/debian/patches/series" | grep -v '^#')
say "applied $n of Debian's patches (security and crash fixes)"
# CVE-2026-4224.patch makes pyexpat.c include an internal header, fine where Debian builds
# pyexpat into the interpreter; as the shared module it is here, it needs
# Py_BUILD_CORE_MODULE, as upstream's own pyexpat.c of later releases defines it
pyexpat=$SRC/Python-$upstream/Modules/pyexpat.c
if grep -q '"pycore_' "$pyexpat" && ! grep -q Py_BUILD_CORE_MODULE "$pyexpat"; then
  sed -i '1i #ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif' "$pyexpat"
fi
cp packaging/glibc-compat.h "$SRC/glibc-compat.h"

# SQLite: the root's libsqlite3 (Debian 11's) calls log@GLIBC_2.29, so the root's own
# source package of it (apt-get source in the root: signed index, hashes checked) is built
# into $PREFIX/lib with glibc-compat.h and Debian's compile-time options
cat >"$ROOT/etc/apt/sources.list.d/build-src.list" <<SRC
deb-src $MIRROR bullseye main
deb-src ${MIRROR%/debian}/debian-security bullseye-security main
SRC
SQLITE_FLAGS="-O2 -fno-strict-aliasing -DSQLITE_SECURE_DELETE -DSQLITE_ENABLE_COLUMN_METADATA \
 -DSQLITE_ENABLE_FTS3 -DSQLITE_ENABLE_FTS3_PARENTHESIS -DSQLITE_ENABLE_RTREE=1 -DSQLITE_SOUNDEX=1 \
 -DSQLITE_ENABLE_UNLOCK_NOTIFY -DSQLITE_OMIT_LOOKASIDE=1 -DSQLITE_ENABLE_DBSTAT_VTAB \
 -DSQLITE_ENABLE_UPDATE_DELETE_LIMIT=1 -DSQLITE_ENABLE_LOAD_EXTENSION -DSQLITE_ENABLE_JSON1 \
 -DSQLITE_LIKE_DOESNT_MATCH_BLOBS -DSQLITE_THREADSAFE=1 -DSQLITE_ENABLE_FTS3_TOKENIZER=1 \
 -DSQLITE_USE_URI=1 -DSQLITE_MAX_SCHEMA_RETRY=25 -DSQLITE_ENABLE_PREUPDATE_HOOK \
 -DSQLITE_ENABLE_SESSION -DSQLITE_ENABLE_STMTVTAB -DSQLITE_MAX_VARIABLE_NUMBER=250000"

say "building SQLite and CPython $upstream in the $ARCH root (minutes; far more under emulation)"
started=$SECONDS
rm -rf "$ROOT$PREFIX"
bash packaging/in-root.sh "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive /bin/sh -ec "
    apt-get update -qq && apt-get install -y -qq tcl >/dev/null   # SQLite's build runs tclsh
    rm -rf /usr/src/sqlite && mkdir -p /usr/src/sqlite && cd /usr/src/sqlite
    apt-get source -qq sqlite3 >/usr/src/python/sqlite-source.log 2>&1
    cd sqlite3-*/
    ./configure --prefix=$PREFIX --disable-tcl --disable-readline --disable-static \
      CFLAGS='-include /usr/src/python/glibc-compat.h $SQLITE_FLAGS' >/usr/src/python/sqlite-configure.log
    make -j$(nproc) >/usr/src/python/sqlite-make.log 2>&1 || { tail -40 /usr/src/python/sqlite-make.log; exit 1; }
    make install >/usr/src/python/sqlite-install.log 2>&1
    cd / && rm -rf /usr/src/sqlite

    cd /usr/src/python/Python-$upstream
    # sem_clockwait is glibc 2.30's: without it threading's timed waits use sem_timedwait
    ./configure --prefix=$PREFIX --enable-shared --with-ensurepip=install \
      ac_cv_func_sem_clockwait=no \
      PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig \
      CFLAGS='-include /usr/src/python/glibc-compat.h' CPPFLAGS='-I$PREFIX/include' \
      LDFLAGS='-L$PREFIX/lib -Wl,-rpath,$PREFIX/lib' OPT='-DNDEBUG -fwrapv -O2 -Wall' \
      >/usr/src/python/configure.log
    make -j$(nproc) >/usr/src/python/make.log 2>&1 || { tail -40 /usr/src/python/make.log; exit 1; }
    if grep -A3 'Failed to build these modules' /usr/src/python/make.log; then exit 1; fi
    make install >/usr/src/python/install.log 2>&1 || { tail -40 /usr/src/python/install.log; exit 1; }
    find $PREFIX -name '*.so*' -type f -exec strip --strip-unneeded {} +
    $PREFIX/bin/python3.11 -c 'import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid, decimal, pyexpat
print(ssl.OPENSSL_VERSION, \"SQLite\", sqlite3.sqlite_version)'
    ldd $PREFIX/lib/python3.11/lib-dynload/_sqlite3*.so | grep -q '$PREFIX/lib/libsqlite3' \
      || { echo '_sqlite3 does not use the SQLite built here' >&2; exit 1; }
  " >&2
rm -rf "$SRC"
echo "$got" >"$STAMP"
say "CPython $got built in $((SECONDS - started)) s"
echo "$ROOT:$PREFIX/bin/python3.11"
