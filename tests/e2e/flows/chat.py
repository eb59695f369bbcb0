"""Chats with the stand-in model: the answer streams into the page token by token, a second
tab of the same user sees the chat running, and open-webui counts the model as in use.

The stand-in answers `tok01 tok02 … tok30`; `[delay=S]` in a prompt sets the seconds
between tokens, so a flow chooses how long the stream lasts.
"""
from __future__ import annotations

import re
import time

from tests.e2e.browser import Page
from tests.e2e.flowrun import FlowRun
from tests.e2e.flows.accounts import accounts
from tests.e2e.openai_standin import MODEL, TOKENS, full_answer

LAST = f"tok{TOKENS:02d}"
STREAM_TIMEOUT = 30.0
USAGE_WINDOW = 4.0  # seconds the page reports the model in model_in_use
DIRECT_PREFIX = "direct"  # the user's own connection's models: direct.<model>

# the text of the newest answer in the page
ANSWER_JS = """() => {
  const all = document.querySelectorAll('#response-content-container');
  return all.length ? all[all.length - 1].innerText : null;
}"""

# that text once it holds `arg.has` but not yet `arg.not`
PARTIAL_JS = """(arg) => {
  const all = document.querySelectorAll('#response-content-container');
  const text = all.length ? all[all.length - 1].innerText : '';
  return text.includes(arg.has) && !text.includes(arg.not) ? text : null;
}"""

# the sidebar entry of a chat while open-webui shows it as running (its spinner)
ACTIVE_IN_SIDEBAR_JS = """(id) => {
  const item = document.querySelector(`a[href="/c/${id}"]`);
  return item && item.querySelector('.spinner_ajPY') ? item.innerText : null;
}"""

IDLE_IN_SIDEBAR_JS = """(id) => {
  const item = document.querySelector(`a[href="/c/${id}"]`);
  return item && !item.querySelector('.spinner_ajPY') ? item.innerText : null;
}"""


def open_new_chat(page: Page) -> None:
    page.goto("/")
    page.wait_for("#chat-input")
    page.wait_socket_connected()


def send(page: Page, prompt: str) -> str:
    """Type the prompt, send it, and return the chat's id once the page moved to it."""
    page.type("#chat-input", prompt, delay_ms=5)
    page.press("Enter")
    url = page.wait_function(
        "() => /\\/c\\/[0-9a-f-]{36}/.test(location.pathname) && location.pathname")
    return url.rsplit("/", 1)[1]


def wait_partial(page: Page, has: str = "tok03", timeout: float = STREAM_TIMEOUT) -> str:
    """The answer shown while it is still streaming: it has `has` and not the last token."""
    return page.wait_function(PARTIAL_JS, {"has": has, "not": LAST}, timeout)


def wait_final(page: Page, timeout: float = STREAM_TIMEOUT) -> str:
    page.wait_function(f"() => ({ANSWER_JS})()?.includes('{LAST}')", None, timeout)
    return page.evaluate(ANSWER_JS)


def tokens_in(text: str) -> list[str]:
    return re.findall(r"tok\d\d", text)


def chat_stream(run: FlowRun) -> None:
    admin, _ = accounts(run)
    page = run.page(run.signed_in(admin), "chat")
    open_new_chat(page)
    send(page, "Stream the tokens [delay=0.1]")
    partial = wait_partial(page)
    run.shot(page, "partial-answer")
    final = wait_final(page)
    run.shot(page, "final-answer")
    # live: the page showed a prefix of the answer before its end
    assert full_answer(TOKENS).startswith(" ".join(tokens_in(partial))), partial
    assert LAST not in partial
    assert final.strip() == full_answer(TOKENS), final


def second_tab(run: FlowRun) -> None:
    """Two tabs of one user: the chat started in the first appears in the second's sidebar
    as running (open-webui sends `chat:active` to every tab of the user), the second tab
    opens it and follows the answer live to its end, the sidebar shows it done, and a
    reload shows the whole answer."""
    admin, _ = accounts(run)
    ctx = run.signed_in(admin)
    first, second = run.page(ctx, "first-tab"), run.page(ctx, "second-tab")
    open_new_chat(first)
    open_new_chat(second)
    chat_id = send(first, "Seen from the other tab [delay=0.2]")
    wait_partial(first)
    title = second.wait_function(ACTIVE_IN_SIDEBAR_JS, chat_id, STREAM_TIMEOUT)
    assert "Seen from the other tab" in title, title
    run.shot(second, "sidebar-shows-running-chat")
    second.click(f'a[href="/c/{chat_id}"]', nth=0)
    # the second tab opened the chat in the middle of the answer and follows it
    later = wait_partial(second, has="tok", timeout=STREAM_TIMEOUT)
    run.shot(second, "second-tab-partial")
    final = wait_final(second)
    run.shot(second, "second-tab-final")
    assert LAST not in later
    # in order, to the last token. Not necessarily every token: open-webui 0.12.4 itself
    # (alone too) drops a token that arrives while the tab is still loading the chat
    seen = [int(t[3:]) for t in tokens_in(final)]
    assert seen == sorted(set(seen)) and seen[-1] == TOKENS, final
    second.wait_function(IDLE_IN_SIDEBAR_JS, chat_id, 10)
    run.shot(second, "sidebar-shows-chat-done")
    second.reload()
    second.wait_function(f"() => ({ANSWER_JS})()?.includes('{LAST}')", None, STREAM_TIMEOUT)
    assert second.evaluate(ANSWER_JS).strip() == full_answer(TOKENS)
    run.shot(second, "second-tab-reloaded")


def model_in_use(run: FlowRun) -> None:
    """The tab reports the model it is using (`usage` events, one a second) and
    open-webui's /api/usage lists it.

    open-webui 0.12.4 sends those reports only while its completion request is in flight,
    and that request returns as soon as the answer is scheduled, well under the first
    report's second. A slow network makes the reports visible: the answer to that
    request reaches the page USAGE_WINDOW seconds late, while the stream already runs."""
    admin, _ = accounts(run)
    page = run.page(run.signed_in(admin), "usage")
    open_new_chat(page)
    page.delay_responses("**/api/chat/completions", USAGE_WINDOW)
    send(page, "Keep the model busy [delay=0.2]")
    api = run.dep.api.as_user(admin.token)
    deadline = time.monotonic() + USAGE_WINDOW
    usage = api.usage()
    while MODEL not in usage.get("model_ids", []) and time.monotonic() < deadline:
        time.sleep(0.2)
        usage = api.usage()
    run.shot(page, "streaming-while-in-use")
    reported = [f for s in page.sockets(frames=200)["sockets"] for f in s["frames"]
                if f["dir"] == "out" and f["text"].startswith('42["usage"')]
    assert reported, "the page sent no usage report: the window was too short"
    assert MODEL in usage.get("model_ids", []), (
        f"/api/usage does not list {MODEL} while the page reports it: {usage}; "
        f"the page reported: {reported[0]['text']}")
    wait_final(page)


def reload_mid_answer(run: FlowRun) -> None:
    """A tab reloaded in the middle of a slow answer shows the answer so far again (open-webui
    0.12 sends it to the chat's room when the reloaded tab joins it) and follows the rest
    live."""
    admin, _ = accounts(run)
    page = run.page(run.signed_in(admin), "reload")
    open_new_chat(page)
    send(page, "Reload me midway [delay=0.25]")
    before = tokens_in(wait_partial(page, has="tok05"))
    run.shot(page, "before-reload")
    page.reload()
    page.wait_for("#response-content-container")
    # still streaming, with at least what was shown before the reload
    again = page.wait_function(PARTIAL_JS, {"has": before[-1], "not": LAST}, STREAM_TIMEOUT)
    run.shot(page, "after-reload")
    assert tokens_in(again)[:len(before)] == before, (before, again)
    final = wait_final(page)
    seen = [int(t[3:]) for t in tokens_in(final)]
    assert seen == sorted(set(seen)) and seen[-1] == TOKENS, final


def direct_connection(run: FlowRun) -> None:
    """The user's own OpenAI connection, called from the browser: open-webui asks the tab
    to run the completion (a Socket.IO call), the tab calls the API itself and sends each
    line of the stream back as `{user_id}:{session_id}:{request_id}` events, and the answer
    streams into the page like any other."""
    _, user = accounts(run)
    run.dep.api.as_user(user.token).add_direct_connection(run.dep.standin_url, DIRECT_PREFIX)
    page = run.page(run.signed_in(user), "direct")
    page.goto(f"/?models={DIRECT_PREFIX}.{MODEL}")
    page.wait_for("#chat-input")
    page.wait_socket_connected()
    page.wait_for(f"text={DIRECT_PREFIX}.{MODEL}", nth=0)
    send(page, "Through my own connection [delay=0.1]")
    wait_partial(page)
    run.shot(page, "direct-partial-answer")
    final = wait_final(page)
    run.shot(page, "direct-final-answer")
    assert final.strip() == full_answer(TOKENS), final
    from_browser = [r for r in run.dep.standin_requests()
                    if r["path"] == "/v1/chat/completions" and r["origin"] == run.dep.url]
    assert from_browser, "the completion did not come from the browser"
