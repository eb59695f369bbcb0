#!/usr/bin/env python3
"""atheris harness: Engine.IO v4 packets and polling payloads (rt.engine.protocol).

The input is a polling POST body; it is also decoded as one websocket text frame and as a
binary frame. Only ProtocolError may come out; what decodes re-encodes to the same packets.

    .venv/bin/python fuzz/fuzz_engineio.py -max_total_time=20 /tmp/work fuzz/corpus/engineio
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import atheris
except ImportError:  # replaying the corpus needs no atheris (tests/fuzz/test_atheris_smoke.py)
    atheris = None

if atheris is not None and __name__ == "__main__":  # instrumented when fuzzing only
    with atheris.instrument_imports(include=["rt", "fuzzlib"]):
        import fuzzlib
else:
    import fuzzlib


def TestOneInput(data: bytes) -> None:
    fuzzlib.check_engineio(data)


def main() -> None:
    fuzzlib.fuzz(TestOneInput)


if __name__ == "__main__":
    main()
