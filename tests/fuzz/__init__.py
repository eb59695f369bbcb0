"""Property tests (hypothesis) of the fuzz targets and the atheris smoke test.

The oracles are shared with the atheris harnesses and live in fuzz/fuzzlib.py, which is
made importable here as `fuzzlib`.
"""
import sys
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
if str(FUZZ_DIR) not in sys.path:
    sys.path.insert(0, str(FUZZ_DIR))

