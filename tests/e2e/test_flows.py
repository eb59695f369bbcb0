"""Every flow of flows/ in a real browser, against open-webui alone and then through the
appliance (test ids: test_flow[<mode>-<flow>]). Run one flow in one mode with
`make e2e PYTEST_ARGS="-k 'alone and chat_stream'"`.

A failing flow reports what its pages showed (errors, the last Socket.IO frames of each
websocket) and the end of every process's log; screenshots and full logs are in
artifacts/e2e/<mode>/.
"""
from __future__ import annotations

import json

import pytest

from tests.e2e import openwebui
from tests.e2e.conftest import artifacts_for
from tests.e2e.flowrun import FlowRun
from tests.e2e.flows import FLOWS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.mark.parametrize("flow", FLOWS, ids=[f.__name__ for f in FLOWS])
def test_flow(deployment, browser, flow, request):
    run = FlowRun(deployment, browser, flow.__name__, artifacts_for(deployment.mode))
    try:
        flow(run)
        errors = run.errors()
        assert not errors, "the pages showed errors:\n" + "\n".join(errors)
    except BaseException:
        _save_frames(run)
        request.node.add_report_section("call", "pages", _pages_report(run))
        request.node.add_report_section("call", "logs", deployment.log_tails())
        raise
    finally:
        run.close()


def _save_frames(run: FlowRun) -> None:
    """Every websocket frame the flow's pages kept, to artifacts/e2e/<mode>/<flow>-frames.json
    (the report below shows the last ones only)."""
    try:
        frames = {page.name: page.sockets(frames=100_000)["sockets"] for page in run.pages}
    except Exception:
        return
    (run.artifacts / f"{run.flow}-frames.json").write_text(json.dumps(frames, indent=1))


def _pages_report(run: FlowRun) -> str:
    try:
        diagnostics, sockets = run.diagnostics(), run.sockets()
    except Exception as exc:  # the browser itself failed: its log says why
        return f"pages unreadable: {exc}\n{run.browser.stderr_tail()}"
    lines = [f"screenshots and every frame ({run.flow}-frames.json): {run.artifacts}"]
    for page, diag in diagnostics.items():
        lines.append(f"== {page}: {json.dumps(diag)[:3000]}")
        for sock in sockets.get(page, []):
            lines.append(f"   websocket {sock['url']} opened {sock['opened']} ms, closed "
                         f"{sock['closed']}")
            lines += [f"     {f['t']} {f['dir']} {f['text'][:300]}" for f in sock["frames"]]
    return "\n".join(lines)


def test_openwebui_stays_offline(deployment):
    """open-webui ran without reaching for the internet (models, updates, telemetry), and
    its model list came from the stand-in."""
    log = deployment.process("open-webui").log_text()
    attempts = openwebui.internet_attempts(log)
    assert not attempts, "open-webui tried to reach the internet:\n" + "\n".join(attempts[:20])
    asked = [r["path"] for r in deployment.standin_requests()]
    assert "/v1/models" in asked, asked
