"""A chat the admin shares with the user ("Share" > people, mode "continue"): the user opens
it, sees the admin typing in it and the admin's next answer stream in live (open-webui sends
both to the chat's room, `chat:{id}`, which tabs enter with `events:chat` join)."""
from __future__ import annotations

from tests.e2e.flowrun import FlowRun
from tests.e2e.flows.accounts import accounts
from tests.e2e.flows.channel import LIVE_TIMEOUT, typing_of
from tests.e2e.flows.chat import STREAM_TIMEOUT, open_new_chat, send, tokens_in, wait_final
from tests.e2e.openai_standin import TOKENS, full_answer


def share_with(run: FlowRun, token: str, chat_id: str, user_id: str) -> None:
    """What the chat's Share dialog does for one person allowed to continue the chat."""
    api = run.dep.api.as_user(token)
    api.call("POST", f"/api/v1/chats/{chat_id}/share", {"share_mode": "continue"})
    api.call("POST", f"/api/v1/chats/shared/{chat_id}/access/update", {
        "share_mode": "continue",
        "access_grants": [{"principal_type": "user", "principal_id": user_id,
                           "permission": p} for p in ("read", "write")]})


def shared_chat(run: FlowRun) -> None:
    admin, user = accounts(run)
    a = run.page(run.signed_in(admin), "owner")
    open_new_chat(a)
    chat_id = send(a, "A chat to share [delay=0.02]")
    wait_final(a)
    share_with(run, admin.token, chat_id, user.id)

    u = run.page(run.signed_in(user), "reader")
    u.goto(f"/c/{chat_id}")
    u.wait_socket_connected()
    u.wait_for("text=A chat to share", nth=0)
    # the reader's tab entered the chat's room (its join was acknowledged with true)
    u.wait_frame(r'^43\d+\[true\]', timeout=LIVE_TIMEOUT)
    run.shot(u, "reader-opened-shared-chat")

    second = "Now with a reader [delay=0.2]"
    typing = a.begin_type("#chat-input", second, delay_ms=40)
    try:
        u.wait_function(typing_of(admin.name), None, LIVE_TIMEOUT)
        run.shot(u, "reader-sees-owner-typing")
    finally:
        typing.result()
    a.press("Enter")
    partial = u.wait_function(
        """() => { const all = document.querySelectorAll('#response-content-container');
                   const t = all.length > 1 ? all[all.length - 1].innerText : '';
                   return t.includes('tok03') && !t.includes('tok30') ? t : null; }""",
        None, STREAM_TIMEOUT)
    run.shot(u, "reader-sees-answer-streaming")
    final = wait_final(u)
    run.shot(u, "reader-sees-final-answer")
    assert "tok30" not in partial
    seen = [int(t[3:]) for t in tokens_in(final)]
    assert seen == sorted(set(seen)) and seen[-1] == TOKENS, final
    u.reload()
    u.wait_function("() => document.querySelectorAll('#response-content-container').length > 1",
                    None, STREAM_TIMEOUT)
    last = u.evaluate(
        "() => [...document.querySelectorAll('#response-content-container')].pop().innerText")
    assert last.strip() == full_answer(TOKENS), last
