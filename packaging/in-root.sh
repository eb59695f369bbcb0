#!/usr/bin/env bash
# Runs a command inside a root file system (packaging/rootfs.sh), in a private mount
# namespace that gets /proc, /dev and /sys; the process and network namespaces are the
# caller's, and every step execs, so the command keeps the caller's process id (the smoke
# test looks at the process tree) and abstract sockets (NOTIFY_SOCKET) are shared. The
# environment is passed through; wrap the command in `env -i` for a clean one.
#
#   bash packaging/in-root.sh ROOT [--bind HOST_DIR:ROOT_DIR]... COMMAND [ARG]...
set -euo pipefail
ROOT=${1:?usage: in-root.sh ROOT [--bind SRC:DST]... COMMAND...}
shift
binds=()
while [[ ${1:-} == --bind ]]; do
  binds+=("$2")
  shift 2
done
exec unshare --mount --propagation private -- /bin/sh -c '
  set -e
  r=$1; binds=$2; shift 2
  mount -t proc proc "$r/proc"
  mount --rbind /dev "$r/dev"
  mount --rbind /sys "$r/sys"
  for b in $binds; do
    mkdir -p "$r${b#*:}"
    mount --bind "${b%%:*}" "$r${b#*:}"
  done
  exec chroot "$r" "$@"' in-root "$ROOT" "${binds[*]:-}" "$@"
