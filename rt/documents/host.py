"""The document host: a child process that holds the pycrdt copies of loaded documents.

pycrdt holds the interpreter lock for the whole of a call: applying a 32 MB state takes
about 180 ms and encoding it as much again, whichever thread makes the call, and every
client of the appliance would wait that long. In a process of its own the work costs the
event loop nothing (and runs on another core); the appliance sends it bytes and gets
bytes back (wire.py). A crash here (pycrdt aborting on an update the grammar check let
through) costs the loaded copies, which are rebuilt from the store, not the appliance.

Requests, answered one at a time in the order received; `id` names the document:

- `load` parts → `sv`, `pairs`, `skipped`: a fresh copy from the stored snapshot and log;
  an unreadable stored part is skipped.
- `catch_up` parts → `sv`, `pairs`: more stored updates applied to the copy.
- `apply` [update] → `ok`, `sv`: a client's update (already checked against the grammar
  and the copy's state vector by the appliance); a copy that refused it is forgotten.
- `encode` → [state]; `forget` → {}.

Any other failure answers `error`. The host ends when its input ends (the appliance
stopped or died); it ignores SIGINT and SIGTERM, which reach the whole process group,
so that a draining appliance keeps its documents to the end.
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import Any, BinaryIO

import pycrdt

from .wire import WireError, read_frame, write_frame
from .yjs import InvalidUpdate, decode_state_vector, inspect_update

log = logging.getLogger("rt.documents.host")

_FATAL = (KeyboardInterrupt, SystemExit, MemoryError)


class Host:
    """The loaded copies, by document id."""

    def __init__(self) -> None:
        self.docs: dict[str, pycrdt.Doc] = {}

    def handle(self, header: dict[str, Any], parts: list[bytes]) -> tuple[dict, list[bytes]]:
        op, document_id = header.get("op"), header.get("id")
        if not isinstance(document_id, str):
            return {"error": "a request without a document id"}, []
        if op == "load":
            fresh: pycrdt.Doc = pycrdt.Doc()
            self.docs[document_id] = fresh
            pairs, skipped = _apply_all(fresh, document_id, parts)
            return {**_state_of(fresh, pairs), "skipped": skipped}, []
        ydoc = self.docs.get(document_id)
        if op == "forget":
            self.docs.pop(document_id, None)
            return {}, []
        if ydoc is None:
            return {"error": f"document {document_id!r} is not loaded here"}, []
        if op == "catch_up":
            pairs, _ = _apply_all(ydoc, document_id, parts)
            return _state_of(ydoc, pairs), []
        if op == "apply" and len(parts) == 1:
            try:
                ydoc.apply_update(parts[0])
                return {"ok": True, "sv": _sv(ydoc)}, []
            except BaseException as exc:  # pyo3's PanicException is a BaseException
                if isinstance(exc, _FATAL):
                    raise
                log.info("update refused by pycrdt for %s: %s", document_id, exc)
                del self.docs[document_id]  # may hold part of the update
                return {"ok": False}, []
        if op == "encode":
            return {}, [ydoc.get_update()]
        return {"error": f"unknown request {op!r}"}, []


def _sv(ydoc: pycrdt.Doc) -> dict[str, int]:
    return {str(client): clock for client, clock in decode_state_vector(ydoc.get_state()).items()}


def _state_of(ydoc: pycrdt.Doc, pairs: dict[int, set[int]]) -> dict[str, Any]:
    return {"sv": _sv(ydoc),
            "pairs": {str(client): sorted(clocks) for client, clocks in pairs.items()}}


def _apply_all(ydoc: pycrdt.Doc, document_id: str,
               parts: list[bytes]) -> tuple[dict[int, set[int]], int]:
    """Apply stored parts one call each (an unreadable one is logged and skipped); returns
    the surrogate pairs of their strings and how many were skipped."""
    pairs: dict[int, set[int]] = {}
    skipped = 0
    for index, part in enumerate(parts):
        try:
            ydoc.apply_update(part)
        except BaseException as exc:
            if isinstance(exc, _FATAL):
                raise
            log.error("stored update #%d of %s is unreadable; skipped", index, document_id)
            skipped += 1
            continue
        try:
            for client, clocks in inspect_update(part).pairs.items():
                pairs.setdefault(client, set()).update(clocks)
        except InvalidUpdate:
            pass  # an empty snapshot; a log from before validation existed
    return pairs, skipped


def serve(stdin: BinaryIO, stdout: BinaryIO, host: Host | None = None) -> int:
    """Answer requests until the input ends."""
    host = host if host is not None else Host()
    while True:
        try:
            request = read_frame(stdin)
        except WireError as exc:
            log.error("document host: %s; stopping", exc)
            return 1
        if request is None:
            return 0
        try:
            header, parts = host.handle(*request)
        except Exception as exc:
            log.exception("document host: request failed")
            header, parts = {"error": f"{type(exc).__name__}: {exc}"}, []
        write_frame(stdout, header, parts)


def main() -> int:
    """The host process's entry (`rt-appliance document-host`, `python -m rt.documents.host`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main())
