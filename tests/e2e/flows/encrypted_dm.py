"""An encrypted direct conversation (open-webui 0.12's "Encrypted Chat", MLS in the
browsers): the admin starts it from the DM's menu, the user sees it in progress and joins,
and messages typed in one browser are decrypted and shown in the other. The server only
relays packets (`encryption:*` events with acks) and never sees the text."""
from __future__ import annotations

from tests.e2e.browser import Page
from tests.e2e.flowrun import FlowRun
from tests.e2e.flows.accounts import accounts
from tests.e2e.flows.channel import LIVE_TIMEOUT, say

JOIN_TIMEOUT = 30.0  # key packages and the group's welcome, through the relay


def wait_active(page: Page) -> None:
    """The conversation is set up: its input takes text."""
    page.wait_for("#chat-input[contenteditable=true]", timeout=JOIN_TIMEOUT)


def encrypted_dm(run: FlowRun) -> None:
    admin, user = accounts(run)
    dm = run.dep.api.as_user(admin.token).call(
        "POST", "/api/v1/channels/create", {"type": "dm", "user_ids": [user.id]})
    a = run.page(run.signed_in(admin), "admin-dm")
    u = run.page(run.signed_in(user), "user-dm")
    for page in (a, u):
        page.goto(f"/channels/{dm['id']}")
        page.wait_for("#chat-input")
        page.wait_socket_connected()

    # the menu of the conversation's header (the sidebar's entry has one too)
    a.click('#channel-container button[aria-label="Conversation options"]')
    a.click("text=Encrypted Chat")
    wait_active(a)
    run.shot(a, "admin-started-encrypted-chat")
    # the user's DM page learns of it (encryption:available) and offers to join
    u.click('button[aria-label="Join encrypted chat"]', timeout=LIVE_TIMEOUT)
    wait_active(u)
    # both are members of the group: keys typed before the admin admitted the user would
    # be encrypted for the admin alone
    for page in (a, u):
        page.wait_for('button[aria-label="2 participants"]', timeout=JOIN_TIMEOUT)
    run.shot(u, "user-joined-encrypted-chat")

    texts = ("Only we can read this", "And only we can read the answer")
    say(run, a, admin.name, u, texts[0], "user", delay_ms=40)
    say(run, u, user.name, a, texts[1], "admin", delay_ms=40)
    # what went over the sockets was ciphertext only
    for page in (a, u):
        for sock in page.sockets(frames=100_000)["sockets"]:
            clear = [f["text"] for f in sock["frames"] if any(t in f["text"] for t in texts)]
            assert not clear, f"{page.name} sent or got the text in clear: {clear[:2]}"
