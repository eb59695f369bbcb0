"""A document host whose pycrdt half-applies every client update and then fails.

`python tests/support/half_applying_host.py HEX`: each `apply` first applies the update
given as HEX to the copy (the document changes), then hands pycrdt bytes it cannot read
(it raises). The real host's handling of that failure answers, as for any update pycrdt
refuses; the appliance must then leave no trace of either.
"""
from __future__ import annotations

import sys
from typing import Any

from rt.documents import host


class HalfApplying(host.Host):
    def __init__(self, sneaky: bytes) -> None:
        super().__init__()
        self.sneaky = sneaky

    def handle(self, header: dict[str, Any], parts: list[bytes]) -> tuple[dict, list[bytes]]:
        ydoc = self.docs.get(str(header.get("id")))
        if header.get("op") == "apply" and ydoc is not None:
            ydoc.apply_update(self.sneaky)
            parts = [b"\xff\xff\xff\xff"]
        return super().handle(header, parts)


if __name__ == "__main__":
    sys.exit(host.serve(sys.stdin.buffer, sys.stdout.buffer, HalfApplying(bytes.fromhex(sys.argv[1]))))
