#!/usr/bin/env python3
"""atheris harness: Socket.IO v5 packets (rt.sio.decode_packet, the strict decoder the
server uses, and python-socketio's Packet for binary attachments).

The input is the packet's text (UTF-8, invalid bytes replaced), then optionally NUL and the
binary attachments separated by NUL. Only MalformedPacket may come out; what the strict
decoder accepts, python-socketio reads the same way and reconstructs without error.

    .venv/bin/python fuzz/fuzz_socketio.py -max_total_time=20 /tmp/work fuzz/corpus/socketio
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
else:
    import fuzzlib


def TestOneInput(data: bytes) -> None:
    text, _, rest = data.partition(b"\0")
    attachments = rest.split(b"\0") if rest else []
    fuzzlib.check_socketio(text.decode("utf-8", "replace"), attachments)


def main() -> None:
    fuzzlib.fuzz(TestOneInput)


if __name__ == "__main__":
    main()
