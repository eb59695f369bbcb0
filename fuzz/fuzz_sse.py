#!/usr/bin/env python3
"""atheris harness: the Server-Sent Events parser (rt.sse.SSEParser feed/finish).

The first bytes pick the limits and where the stream is cut; the rest is the stream. Only
SSEError may come out; any chunking (whole, cut, byte by byte) gives the events of the
whole stream, which are those of an independent reference parser; with limits, every
chunking agrees on whether SSEError ends the stream.

    .venv/bin/python fuzz/fuzz_sse.py -max_total_time=20 -dict=fuzz/dict/sse.dict \\
        /tmp/work fuzz/corpus/sse
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
else:
    import fuzzlib


def TestOneInput(data: bytes) -> None:
    if len(data) < 4:
        fuzzlib.check_sse(data, [])
        return
    max_line = 1 + data[0] if data[0] < 200 else 1 << 20
    max_event = 1 + data[1] * 2 if data[1] < 200 else 4 << 20
    stream = data[4:]
    step = 1 + data[2] % 13
    cuts = list(range(data[3] % step, len(stream), step))
    fuzzlib.check_sse(stream, cuts, max_line, max_event)


def main() -> None:
    fuzzlib.fuzz(TestOneInput)


if __name__ == "__main__":
    main()
