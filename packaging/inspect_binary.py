"""Inspect a built one-file binary: what it bundles and which glibc it needs.

    build/venv/bin/python packaging/inspect_binary.py dist/rt-appliance [--report FILE]

Fails (exit 1) when a forbidden package (test-only: aiohttp, fakeredis, pytest, ...) is
inside. Prints the bundled shared objects with the newest GLIBC_x.y symbol version each
needs; the largest one is the oldest glibc the binary runs on. Needs PyInstaller (the
build environment) and binutils' objdump.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from PyInstaller.archive.readers import PKG_ITEM_PYZ, CArchiveReader

FORBIDDEN = ("aiohttp", "fakeredis", "pytest", "_pytest", "hypothesis", "y_py",
             "pytest_asyncio", "pytest_tornado", "pytest_timeout", "requests", "websocket",
             "tests")
_GLIBC = re.compile(rb"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?")


def glibc_needed(path: str) -> tuple[int, ...] | None:
    """Newest GLIBC_ version referenced by the dynamic symbols of an ELF file."""
    out = subprocess.run(["objdump", "-T", path], capture_output=True, check=False).stdout
    versions = [tuple(int(x) for x in m.groups() if x is not None) for m in _GLIBC.finditer(out)]
    return max(versions) if versions else None


def fmt(version: tuple[int, ...] | None) -> str:
    return ".".join(map(str, version)) if version else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--report", help="also write the report to this file")
    args = ap.parse_args(argv)

    pkg = CArchiveReader(args.binary)
    modules: list[str] = []
    elves: list[str] = []
    for name, entry in pkg.toc.items():
        typecode = entry[-1]
        if typecode == PKG_ITEM_PYZ:
            modules += list(pkg.open_embedded_archive(name).toc)
        elif name.endswith(".so") or ".so." in name:
            elves.append(name)
        else:
            modules.append(name)

    bad = sorted({m for m in modules + elves
                  for top in [re.split(r"[./]", m)[0]] if top in FORBIDDEN})
    lines = [f"binary: {args.binary} ({os.path.getsize(args.binary) / 2**20:.1f} MiB)",
             f"python modules: {len(modules)}, shared objects: {len(elves)}"]
    needed = {"(bootloader)": glibc_needed(args.binary)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in elves:
            path = os.path.join(tmp, name.replace("/", "_"))
            with open(path, "wb") as fh:
                fh.write(pkg.extract(name))
            needed[name] = glibc_needed(path)
    width = max(map(len, needed))
    lines.append("newest GLIBC symbol version needed, per ELF file:")
    lines += [f"  {name:<{width}}  {fmt(v)}" for name, v in
              sorted(needed.items(), key=lambda kv: kv[1] or (), reverse=True)]
    overall = max(v for v in needed.values() if v)
    lines.append(f"oldest glibc the binary runs on: {fmt(overall)}")
    if bad:
        lines.append(f"FORBIDDEN packages inside: {', '.join(bad)}")
    text = "\n".join(lines)
    print(text)
    if args.report:
        with open(args.report, "w") as fh:
            fh.write(text + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
