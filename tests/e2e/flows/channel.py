"""A channel created by the admin while both people are online, with the user as member:
it appears in the user's sidebar at once, and in it each sees the other typing ("… is
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
        label: str, delay_ms: int = 60) -> None:
    """The speaker types `text` key by key while the listener watches: first the typing
    indicator, then the message once sent."""
    typing = speaker.begin_type("#chat-input", text, delay_ms=delay_ms)
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
    a = run.page(run.signed_in(admin), "admin-channel")
    u = run.page(run.signed_in(user), "user-channel")
    for page in (a, u):
        page.goto("/")
        page.wait_for("#chat-input")
        page.wait_socket_connected()
    # a group channel with the user as member, as the sidebar's "+" creates it
    name = f"e2e-{run.dep.mode}-{secrets.token_hex(3)}"
    channel = run.dep.api.as_user(admin.token).create_group_channel(name, [user.id])
    link = f'a[href="/channels/{channel["id"]}"]'
    # open-webui tells the members' tabs (`channel:created`) and their sidebars list it
    u.wait_for(link, timeout=LIVE_TIMEOUT, nth=0)
    run.shot(u, "channel-appears-in-user-sidebar")
    open_channel(a, channel["id"])
    u.click(link, nth=0)
    u.wait_function(f"() => location.pathname === '/channels/{channel['id']}'")
    u.wait_for("#chat-input")
    run.shot(u, "user-in-channel")
    say(run, a, admin.name, u, "Hello Bob, the channel is live", "user")
    say(run, u, user.name, a, "Hello Ada, I read you", "admin")
