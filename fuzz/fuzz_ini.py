#!/usr/bin/env python3
"""atheris harness: the INI configuration (rt.config.load_settings).

The input is the file's bytes, optionally followed by NUL NUL and environment lines
`NAME=value`. The result is Settings or ConfigError, nothing else; a loaded configuration
can be described (print-config) and diffed (reload); a credential never shows in an error
or in print-config.

    .venv/bin/python fuzz/fuzz_ini.py -max_total_time=20 -dict=fuzz/dict/ini.dict \\
        /tmp/work fuzz/corpus/ini
"""
import os
import sys
import tempfile

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

_dir = None


def TestOneInput(data: bytes) -> None:
    global _dir
    if _dir is None:
        _dir = tempfile.mkdtemp(prefix="rt-fuzz-ini-", dir=fuzzlib.scratch_dir())
    ini, _, env_text = data.partition(b"\0\0")
    environ = {}
    for line in env_text.decode("utf-8", "replace").splitlines():
        name, eq, value = line.partition("=")
        if eq and name and "\0" not in name + value:
            environ[name] = value
    fuzzlib.check_ini(ini, environ, _dir)


def main() -> None:
    fuzzlib.fuzz(TestOneInput)


if __name__ == "__main__":
    main()
