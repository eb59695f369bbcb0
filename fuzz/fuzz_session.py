#!/usr/bin/env python3
"""atheris harness: whole polling POST bodies into a live session of a real appliance in
process (fuzzlib.World): Engine.IO payload decoding, the strict Socket.IO decoder and its
connection states, binary attachments, python-socketio's dispatch, the gateway.

The input is the body, for the connected client; or, when its first byte is NUL, the
first body a brand-new Engine.IO session receives (a CONNECT with any auth, or anything
before one). Nothing may be logged at ERROR. A connected session lives on, or is closed and
leaves nothing behind (identity, presence, rooms, usage, document editors, limits, a
half-received binary packet) and its client connects again; a new session, once gone,
leaves the appliance as it was.

    .venv/bin/python fuzz/fuzz_session.py -max_total_time=20 -dict=fuzz/dict/session.dict \\
        /tmp/work fuzz/corpus/session
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import atheris
except ImportError:
    atheris = None

if atheris is not None and __name__ == "__main__":  # instrumented when fuzzing only
    with atheris.instrument_imports(include=["rt", "socketio", "fuzzlib"]):
        import fuzzlib

        import rt.app  # noqa: F401  (the whole appliance, instrumented: World imports it late)
        import rt.documents.events  # noqa: F401
else:
    import fuzzlib

RESTART_EVERY = 400
_runner = None


def TestOneInput(data: bytes) -> None:
    global _runner
    if _runner is None:
        _runner = fuzzlib.WorldRunner()
    if _runner.runs and _runner.runs % RESTART_EVERY == 0:
        _runner.restart()
    if data[:1] == b"\0":
        _runner.run(fuzzlib.World.check_fresh_post, data[1:])
    else:
        _runner.run(fuzzlib.World.check_post, data)


def main() -> None:
    fuzzlib.fuzz(TestOneInput, done=lambda: _runner is not None and _runner.close())


if __name__ == "__main__":
    main()
