"""The /admin status page in a real browser (Debian's headless Chromium): it loads behind
the API key, its live figures match the appliance, and a screenshot is kept as an artifact
(artifacts/admin.png)."""
import asyncio
import json
import os
import shutil

import pytest

from tests.support.appliance import API_KEY, ROOT, running
from tests.support.node_client import node_available

pytestmark = pytest.mark.asyncio

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def require_browser() -> None:
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append("Debian's chromium (apt-get install chromium)")
    if node_available() is not None or not (ROOT / "tests/node/node_modules/playwright-core").exists():
        missing.append("the npm test packages (make node-deps)")
    if missing:
        reason = "needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


async def test_admin_page_in_headless_chromium(tmp_path):
    require_browser()
    async with running(tmp_path) as h:
        for uid in ("ann", "bob"):
            await h.user(uid, uid.title())
        await h.connect(h.token("ann"))
        await h.connect(h.token("ann"), transports=("polling",))
        await h.connect(h.token("bob"))
        artifacts = ROOT / "artifacts"
        artifacts.mkdir(exist_ok=True)
        shot = artifacts / "admin.png"
        proc = await asyncio.create_subprocess_exec(
            shutil.which("node"), str(ROOT / "tests/node/admin_page.mjs"), h.url + "/admin",
            API_KEY, str(shot), cwd=ROOT / "tests/node",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        figures = json.loads(out.decode().strip().splitlines()[-1])
        assert figures["errors"] == []
        assert figures["connections"] == "3"
        assert "websocket 2" in figures["transports"] and "polling 1" in figures["transports"]
        assert "ann" in figures["users"] and "bob" in figures["users"]
        assert figures["updates"] >= 3 and "sqlite" in figures["meta"]
        assert shot.stat().st_size > 10_000
