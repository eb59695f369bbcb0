"""The short soak: churn, typing, emits and document edits for a few seconds, then every
session, room, presence and usage entry and task must be gone (soak/soak.py; `make soak`
runs the long version)."""
import subprocess
import sys

from tests.support.appliance import ROOT


def test_short_soak_returns_to_baseline():
    out = subprocess.run([sys.executable, str(ROOT / "soak" / "soak.py"), "--seconds", "12",
                          "--clients", "60", "--rss-slack-mb", "30"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| sessions_after | 0.0 |" in out.stdout and "| problems | [] |" in out.stdout
