"""Signing out revokes the token (open-webui marks it revoked in Redis) and ends the
Socket.IO session of every tab that still holds it: open-webui re-verifies each socket's
token every 30 s, so a second tab of the profile loses its session within that period."""
from __future__ import annotations

from tests.e2e.flowrun import FlowRun, token_of
from tests.e2e.flows.accounts import accounts
from tests.e2e.flows.chat import open_new_chat

REVERIFY_WITHIN = 40.0  # seconds: the 30 s period plus margin


def sign_out(run: FlowRun) -> None:
    admin, _ = accounts(run)
    # a token of its own: the saved profile of the admin stays signed in for other flows
    ctx, tab = run.fresh_sign_in(admin, "signing-out")
    other = run.page(ctx, "other-tab")
    open_new_chat(other)
    token = token_of(tab)
    since = other.now_ms()
    run.shot(other, "other-tab-signed-in")

    tab.click('button[aria-label="User menu"] >> visible=true')
    tab.click("text=Sign Out")
    tab.wait_function("() => location.pathname === '/auth'")
    run.shot(tab, "signed-out")
    status = run.dep.api.as_user(token).call("GET", "/api/v1/auths/", expect=401)
    assert status is None or "detail" in status

    ended = other.wait_socket_disconnected(since, timeout=REVERIFY_WITHIN)
    run.shot(other, "other-tab-session-ended")
    assert ended["at"] >= since, ended
