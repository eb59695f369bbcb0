"""A channel of the admin with the user as member: each sees the other typing ("… is
typing...") and the other's messages arrive live, without a reload."""
from __future__ import annotations

import secrets

from tests.e2e.browser import Page
from tests.e2e.flowrun import FlowRun
from tests.e2e.flows.accounts import accounts

LIVE_TIMEOUT = 15.0


def typing_of(name: str) -> str:
    return f"() => document.body.innerText.includes({name!r} + ' is typing')"


def has_text(text: str) -> str:
    return f"() => document.body.innerText.includes({text!r})"


def open_channel(page: Page, channel_id: str) -> None:
    page.goto(f"/channels/{channel_id}")
    page.wait_for("#chat-input")
    page.wait_socket_connected()


def say(run: FlowRun, speaker: Page, speaker_name: str, listener: Page, text: str,
        label: str) -> None:
    """The speaker types `text` key by key while the listener watches: first the typing
    indicator, then the message once sent."""
    typing = speaker.begin_type("#chat-input", text, delay_ms=60)
    try:
        listener.wait_function(typing_of(speaker_name), None, LIVE_TIMEOUT)
        run.shot(listener, f"{label}-sees-typing")
    finally:
        typing.result()
    speaker.press("Enter")
    listener.wait_function(has_text(text), None, LIVE_TIMEOUT)
    run.shot(listener, f"{label}-sees-message")


def channel_live(run: FlowRun) -> None:
    admin, user = accounts(run)
    name = f"e2e-{run.dep.mode}-{secrets.token_hex(3)}"
    # a group channel created by the admin with the user as member (its sidebar "+" does
    # the same call)
    channel = run.dep.api.as_user(admin.token).create_group_channel(name, [user.id])
    a = run.page(run.signed_in(admin), "admin-channel")
    u = run.page(run.signed_in(user), "user-channel")
    open_channel(a, channel["id"])
    open_channel(u, channel["id"])
    run.shot(u, "user-in-channel")
    say(run, a, admin.name, u, "Hello Bob, the channel is live", "user")
    say(run, u, user.name, a, "Hello Ada, I read you", "admin")
