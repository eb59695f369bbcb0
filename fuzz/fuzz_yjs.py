#!/usr/bin/env python3
"""atheris harness: Yjs update intake (rt.collab via the real ydoc:document:update event,
pycrdt underneath), in a real appliance in process (fuzzlib.World).

The input is one update, sent as a binary attachment to a document the client joined with
write access (it holds text from earlier accepted updates). A refused update is refused
with bad_request/too_large and leaves the document's state bytes and the store as they
were; an accepted one passed the grammar and is contained in the document afterwards;
never `internal`, never an error logged.

    .venv/bin/python fuzz/fuzz_yjs.py -max_total_time=20 /tmp/work fuzz/corpus/yjs
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import atheris
except ImportError:
    atheris = None

if atheris is not None and __name__ == "__main__":  # instrumented when fuzzing only
    with atheris.instrument_imports(include=["rt", "fuzzlib"]):
        import fuzzlib

        import rt.app  # noqa: F401  (the whole appliance, instrumented: World imports it late)
        import rt.documents.events  # noqa: F401
else:
    import fuzzlib

RESET_EVERY = 200  # the document starts over now and then, so it stays small
_runner = None


def TestOneInput(data: bytes) -> None:
    global _runner
    if _runner is None:
        _runner = fuzzlib.WorldRunner()
    if _runner.runs and _runner.runs % RESET_EVERY == 0:
        _runner.run(fuzzlib.World.reset_document)
    _runner.run(fuzzlib.World.check_update, data)


def main() -> None:
    fuzzlib.fuzz(TestOneInput, done=lambda: _runner is not None and _runner.close())


if __name__ == "__main__":
    main()
