#!/usr/bin/env python3
"""atheris harness: every client event's payload, through a real appliance in process
(fuzzlib.World: real SQLite store, python-socketio server, Engine.IO polling sessions, the
gateway and the ydoc:* handlers; nothing listens).

The input is the event as UTF-8 JSON, `["event", payload...]`, optionally followed by NUL
and a binary blob that replaces every "$blob" string (sent as a binary attachment). Input
that is not such JSON is turned into an event by a structured builder. For each event:
it is answered, never `internal`, nothing is logged at ERROR, the connection lives, and a
refused event changes no state (rooms, sessions, presence, usage, editors, store rows,
document states).

    .venv/bin/python fuzz/fuzz_events.py -max_total_time=20 -dict=fuzz/dict/events.dict \\
        /tmp/work fuzz/corpus/events
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

RESTART_EVERY = 400  # a fresh appliance now and then: state piles up over a long run
_runner = None


def runner() -> "fuzzlib.WorldRunner":
    global _runner
    if _runner is None:
        _runner = fuzzlib.WorldRunner()
    return _runner


def TestOneInput(data: bytes) -> None:
    args = fuzzlib.event_from_input(data)
    if args is None:
        if atheris is None:
            return
        args = fuzzlib.event_from_bytes(data)
    r = runner()
    if r.runs and r.runs % RESTART_EVERY == 0:
        r.restart()
    ack = not data.endswith(b"\n\n")  # now and then without an ack: the `error` event path
    r.run(fuzzlib.World.check_event, args, ack=ack)


def main() -> None:
    fuzzlib.fuzz(TestOneInput, done=lambda: _runner is not None and _runner.close())


if __name__ == "__main__":
    main()
