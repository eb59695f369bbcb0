"""The atheris harnesses (fuzz/fuzz_*.py): each replays its seed corpus (no atheris
needed), and each fuzzes for a couple of seconds under atheris (skipped locally when
atheris is missing; under CI=true a missing atheris fails)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.fuzz import FUZZ_DIR

TARGETS = sorted(p.stem[len("fuzz_"):] for p in FUZZ_DIR.glob("fuzz_*.py"))
SECONDS = 2
INSTALL = f"{sys.executable} -m pip install -r fuzz/requirements.txt"


def test_every_target_has_a_seed_corpus():
    assert set(TARGETS) >= {"engineio", "socketio", "session", "events", "jwt", "ini", "sse",
                            "yjs"}
    for target in TARGETS:
        seeds = list((FUZZ_DIR / "corpus" / target).iterdir())
        assert 8 <= len(seeds) <= 40, (target, len(seeds))
        assert all(s.stat().st_size <= 20_000 for s in seeds), target


def _load(target: str):
    spec = importlib.util.spec_from_file_location(f"_fuzz_{target}", FUZZ_DIR / f"fuzz_{target}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("target", TARGETS)
def test_seed_corpus_replays_clean(target):
    module = _load(target)
    try:
        for seed in sorted((FUZZ_DIR / "corpus" / target).iterdir()):
            module.TestOneInput(seed.read_bytes())
    finally:
        runner = getattr(module, "_runner", None)
        if runner is not None:
            runner.close()
        scratch = getattr(module, "_dir", None)  # fuzz_ini's folder
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory):
    """Every harness under atheris for SECONDS, all at once; target → (code, log, dir)."""
    if not _atheris_available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"atheris is required under CI: {INSTALL}")
        pytest.skip(f"atheris is not installed: {INSTALL}")
    root = tmp_path_factory.mktemp("atheris")
    procs = {}
    for target in TARGETS:
        work = root / target
        (work / "corpus").mkdir(parents=True)
        (work / "tmp").mkdir()  # the in-process appliances' data (RT_FUZZ_TMP)
        log = open(work / "log", "wb")
        cmd = [sys.executable, str(FUZZ_DIR / f"fuzz_{target}.py"),
               f"-max_total_time={SECONDS}", "-timeout=30", "-rss_limit_mb=2048",
               f"-artifact_prefix={work}/", str(work / "corpus"),
               str(FUZZ_DIR / "corpus" / target)]
        env = {**os.environ, "RT_FUZZ_TMP": str(work / "tmp")}
        procs[target] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          cwd=FUZZ_DIR.parent), log, work)
    deadline = time.monotonic() + 120
    results = {}
    for target, (proc, log, work) in procs.items():
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
        results[target] = (code, (work / "log").read_text(errors="replace"), work)
    return results


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_briefly(fuzz_runs, target):
    code, log, work = fuzz_runs[target]
    crashes = [p.name for p in work.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]
    assert code == 0 and not crashes, f"fuzz_{target} exited {code}, {crashes}:\n{log[-6000:]}"
    assert "Done " in log and " runs in " in log, log[-2000:]
