#!/usr/bin/env bash
# Builds (once) the arm64 CPython 3.11 on an x86-64 machine: cross-compiled in the amd64
# build root with Debian 11's aarch64 cross compiler (crossbuild-essential-arm64), the
# arm64 root mounted as its --sysroot (its headers and libraries: what the binary will
# bundle), then put into the arm64 root's /opt/python3.11. The same sources, patches,
# glibc-compat.h and options as packaging/build-python.sh, whose amd64 interpreter (the
# same version) is the cross build's build Python. Compiling under qemu-user instead takes
# well over an hour on 2 cores (the configure step alone about 20 minutes).
#
#   bash packaging/build-python-cross.sh      -> prints ARM64_ROOT:/opt/python3.11/bin/python3.11
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${RT_CACHE:-$HOME/.cache/rt-appliance}
PREFIX=/opt/python3.11
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
OUT=/usr/src/cross-out
say() { printf '==> %s\n' "$*" >&2; }

bash packaging/build-python.sh amd64 >/dev/null   # the build Python, and the source package
AMD=$(bash packaging/rootfs.sh amd64)
ARM=$(bash packaging/rootfs.sh arm64)
KEY=$(cat packaging/build-python-cross.sh packaging/build-python.sh packaging/glibc-compat.h \
      | sha256sum | cut -c1-16)
STAMP=$ARM$PREFIX/.built-cross-$KEY
if [[ -e $STAMP && "${RT_PYTHON_REBUILD:-}" != 1 ]]; then
  say "CPython $(cat "$STAMP") in $ARM$PREFIX (cross-built, cached)"
  echo "$ARM:$PREFIX/bin/python3.11"
  exit 0
fi
got=$(cat "$AMD$PREFIX"/.built-* | head -1)   # the Debian version the amd64 build used
upstream=${got%%-*}

SRC=$AMD/usr/src/python
rm -rf "$SRC" "$AMD$OUT"
mkdir -p "$SRC"
tar -xzf "$CACHE/src/python3.11_$upstream.orig.tar.gz" -C "$SRC"
tar -xJf "$CACHE/src/python3.11_$got.debian.tar.xz" -C "$SRC"
while read -r patch; do
  patch -d "$SRC/Python-$upstream" -p1 -s -N <"$SRC/debian/patches/$patch" >&2
done < <(sed -n '/^shutdown-deadlock/,$p' "$SRC/debian/patches/series" | grep -v '^#')
pyexpat=$SRC/Python-$upstream/Modules/pyexpat.c
if grep -q '"pycore_' "$pyexpat" && ! grep -q Py_BUILD_CORE_MODULE "$pyexpat"; then
  sed -i '1i #ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif' "$pyexpat"
fi
cp packaging/glibc-compat.h "$SRC/glibc-compat.h"
SQLITE_FLAGS=$(sed -n '/^SQLITE_FLAGS="/,/"$/p' packaging/build-python.sh | tr -d '\\\n' \
               | sed 's/^SQLITE_FLAGS="//; s/"$//')
cat >"$AMD/etc/apt/sources.list.d/build-src.list" <<SRC
deb-src $MIRROR bullseye main
deb-src ${MIRROR%/debian}/debian-security bullseye-security main
SRC

say "cross-building SQLite and CPython $upstream for arm64 in the amd64 root (minutes)"
started=$SECONDS
CROSS_CC='aarch64-linux-gnu-gcc --sysroot=/sysroot'
# the arm64 root's -dev symlinks and linker scripts name absolute paths (libm.so ->
# /lib/aarch64-linux-gnu/libm.so.6, libc.so -> /lib/ld-linux-aarch64.so.1): its library
# directory is mounted there too and the loader linked for the build, or the linker takes
# the static libm.a or stops
bash packaging/in-root.sh "$AMD" --bind "$ARM:/sysroot" \
  --bind "$ARM/usr/lib/aarch64-linux-gnu:/lib/aarch64-linux-gnu" \
  /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive /bin/sh -ec "
    apt-get update -qq
    apt-get install -y -qq crossbuild-essential-arm64 tcl >/dev/null
    ln -sfn aarch64-linux-gnu/ld-linux-aarch64.so.1 /lib/ld-linux-aarch64.so.1
    trap 'rm -f /lib/ld-linux-aarch64.so.1' EXIT
    rm -rf /usr/src/sqlite && mkdir -p /usr/src/sqlite && cd /usr/src/sqlite
    apt-get source -qq sqlite3 >/usr/src/python/sqlite-source.log 2>&1
    cd sqlite3-*/
    ./configure --host=aarch64-linux-gnu --build=x86_64-linux-gnu --prefix=$PREFIX \
      --disable-tcl --disable-readline --disable-static CC='$CROSS_CC' \
      CFLAGS='-include /usr/src/python/glibc-compat.h $SQLITE_FLAGS' >/usr/src/python/sqlite-configure.log
    # lemon runs during the build: Debian's Makefile links it for the target, so make it here
    gcc -O2 -o lemon tool/lemon.c && cp tool/lempar.c .
    make -j$(nproc) libsqlite3.la >/usr/src/python/sqlite-make.log 2>&1 \
      || { tail -40 /usr/src/python/sqlite-make.log; exit 1; }
    make lib_install DESTDIR=$OUT >/usr/src/python/sqlite-install.log 2>&1
    install -d $OUT$PREFIX/include && install -m 0644 sqlite3.h src/sqlite3ext.h $OUT$PREFIX/include
    cd / && rm -rf /usr/src/sqlite

    cd /usr/src/python/Python-$upstream
    printf 'ac_cv_file__dev_ptmx=yes\nac_cv_file__dev_ptc=no\nac_cv_buggy_getaddrinfo=no\npy_cv_module_nis=n/a\n' >/usr/src/python/config.site
    CONFIG_SITE=/usr/src/python/config.site ./configure --host=aarch64-linux-gnu \
      --build=x86_64-linux-gnu --prefix=$PREFIX --enable-shared --with-ensurepip=no \
      --with-build-python=$PREFIX/bin/python3.11 \
      ac_cv_func_sem_clockwait=no CC='$CROSS_CC' CXX='aarch64-linux-gnu-g++ --sysroot=/sysroot' \
      PKG_CONFIG_SYSROOT_DIR=/sysroot \
      PKG_CONFIG_LIBDIR=/sysroot/usr/lib/aarch64-linux-gnu/pkgconfig:/sysroot/usr/share/pkgconfig \
      CFLAGS='-include /usr/src/python/glibc-compat.h' CPPFLAGS='-I$OUT$PREFIX/include' \
      LDFLAGS='-L$OUT$PREFIX/lib -Wl,-rpath,$PREFIX/lib' OPT='-DNDEBUG -fwrapv -O2 -Wall' \
      >/usr/src/python/configure.log
    make -j$(nproc) >/usr/src/python/make.log 2>&1 || { tail -40 /usr/src/python/make.log; exit 1; }
    if grep -A3 'Failed to build these modules' /usr/src/python/make.log; then exit 1; fi
    make install DESTDIR=$OUT >/usr/src/python/install.log 2>&1 || { tail -40 /usr/src/python/install.log; exit 1; }
    find $OUT$PREFIX -name '*.so*' -type f -exec aarch64-linux-gnu-strip --strip-unneeded {} +
  " >&2

say "into the arm64 root; pip and a check there, under emulation"
rm -rf "$ARM$PREFIX"
mkdir -p "$ARM/opt"
cp -a "$AMD$OUT$PREFIX" "$ARM$PREFIX"
rm -rf "$AMD$OUT" "$SRC"
bash packaging/in-root.sh "$ARM" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  LANG=C.UTF-8 /bin/sh -ec "
    $PREFIX/bin/python3.11 -m ensurepip >/dev/null
    $PREFIX/bin/python3.11 -c 'import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid, decimal, pyexpat, platform
print(platform.machine(), ssl.OPENSSL_VERSION, \"SQLite\", sqlite3.sqlite_version)'
    ldd $PREFIX/lib/python3.11/lib-dynload/_sqlite3*.so | grep -q '$PREFIX/lib/libsqlite3' \
      || { echo '_sqlite3 does not use the SQLite built here' >&2; exit 1; }
  " >&2
echo "$got" >"$STAMP"
say "CPython $got for arm64 built in $((SECONDS - started)) s"
echo "$ARM:$PREFIX/bin/python3.11"
