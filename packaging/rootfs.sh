#!/usr/bin/env bash
# Makes (once) the build root file system of one architecture: Debian 11 "bullseye"
# (glibc 2.31), the oldest Debian release deb.debian.org still serves, from Debian's
# package archive with debootstrap, with the tools and headers to build CPython.
#
#   bash packaging/rootfs.sh amd64|arm64      -> prints the root file system's path
#
# Cached in $RT_CACHE (default ~/.cache/rt-appliance)/rootfs-bullseye-<arch>; a file
# .complete inside marks a finished one (an interrupted debootstrap is started anew).
# arm64 on an x86-64 machine runs under user-mode emulation: qemu-user-static with its
# binfmt_misc entry (the F flag: the emulator is opened once, no copy in the root).
# Needs root, debootstrap (and qemu-user-static, binfmt-support for arm64).
set -euo pipefail
ARCH=${1:?usage: rootfs.sh amd64|arm64}
SUITE=bullseye
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${RT_CACHE:-$HOME/.cache/rt-appliance}
ROOT=$CACHE/rootfs-$SUITE-$ARCH
# what CPython's build needs (its bundled expat and libmpdec are used; tcl runs SQLite's
# build), objdump, and the CA list for pip
PACKAGES=tcl,build-essential,pkg-config,binutils,ca-certificates,xz-utils,libssl-dev,libffi-dev,zlib1g-dev,libbz2-dev,liblzma-dev,uuid-dev,libsqlite3-dev

say() { printf '==> %s\n' "$*" >&2; }

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
if [[ $ARCH != "$(dpkg --print-architecture)" ]]; then
  command -v update-binfmts >/dev/null || need+=(binfmt-support)
  [[ -e /usr/bin/qemu-aarch64-static || -e /usr/bin/qemu-aarch64 ]] || need+=(qemu-user-static)
fi
if ((${#need[@]})); then
  say "installing ${need[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
if [[ $ARCH == arm64 && $(uname -m) != aarch64 ]]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 >&2
  grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || { echo "qemu-aarch64 binfmt entry lacks the F flag (qemu-user-static's)" >&2; exit 1; }
fi

if [[ ! -e $ROOT/.complete ]]; then
  if [[ ! -e $ROOT/.debootstrapped ]]; then
    say "debootstrap $SUITE $ARCH into $ROOT (once; several minutes, more under emulation)"
    rm -rf "$ROOT"
    mkdir -p "$CACHE"
    debootstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" \
      "$SUITE" "$ROOT" "$MIRROR" >"$CACHE/debootstrap-$ARCH.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap-$ARCH.log" >&2; exit 1; }
    touch "$ROOT/.debootstrapped"
  fi
  # the suite's security and point-release updates; a mirror that lags behind its index
  # (a 404 for one package) leaves that package at its older version, with a warning
  cat >"$ROOT/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
SRC
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -qq && apt-get -y -qq --fix-missing dist-upgrade; apt-get clean' \
    >>"$CACHE/debootstrap-$ARCH.log" 2>&1 \
    || say "warning: not every update of $SUITE could be fetched (see $CACHE/debootstrap-$ARCH.log)"
  touch "$ROOT/.complete"
fi
echo "$ROOT"
