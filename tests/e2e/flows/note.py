"""A note of the admin, shared with the user with write access, open in two browser
profiles: the user sees the admin's keys as they are typed, then both type at once, both
editors converge to the same text, and the text is open-webui's: its API has it and a
reload of the note page shows it.
"""
from __future__ import annotations

import re
import time

from tests.e2e.browser import BrowserError, Page
from tests.e2e.flowrun import FlowRun
from tests.e2e.flows.accounts import accounts

EDITOR = ".ProseMirror[contenteditable=true]"
SYNC_TIMEOUT = 15.0
SAVE_TIMEOUT = 15.0  # open-webui saves the note content debounced
SEED_SENT_WITHIN = 2.0  # seconds: the editor seeds the document as it handles the state

ADA_WORDS = " alpha bravo charlie"
BOB_WORDS = " delta echo foxtrot"

# the editor's paragraphs, one a line, without the other editor's cursor (its name tag is
# in the DOM)
TEXT_JS = """() => {
  const editor = document.querySelector('.ProseMirror');
  if (!editor) return null;
  const copy = editor.cloneNode(true);
  copy.querySelectorAll('.ProseMirror-yjs-cursor').forEach((n) => n.remove());
  return [...copy.querySelectorAll('p')].map((p) => p.textContent.replace(/\\u2060/g, ''))
    .join('\\n');
}"""


def wait_text(page: Page, expected: str, what: str) -> None:
    try:
        page.wait_function(f"() => ({TEXT_JS})() === {expected!r}", None, SYNC_TIMEOUT)
    except BrowserError:
        raise AssertionError(f"{what}: the editor of {page.name} shows "
                             f"{page.evaluate(TEXT_JS)!r}, not {expected!r}") from None


def open_note(page: Page, note_id: str) -> None:
    """Open the note and wait until its editor accepts keys.

    On joining, the server sends the document's state (and the note's content). When the
    state is empty and a content came with it, open-webui's editor seeds the document from
    that content (`initialize: true`) and takes keys only once the server acknowledged the
    seed with the stored state; otherwise it takes keys at once. (Typing before the ack
    races the seeding, where even open-webui alone can duplicate the first key.)"""
    page.goto(f"/notes/{note_id}")
    page.wait_for(EDITOR)
    page.wait_socket_connected()
    state = page.wait_frame(r'^4[25]\d*-?\["ydoc:document:state"', timeout=SYNC_TIMEOUT)
    text = state["text"]
    if '"_placeholder":true' in text:
        # the state came as a binary attachment: whether it is empty is not in the frame,
        # so a seed, if any, is recognised by the page sending it (it does so at once)
        seeds = _seed_sent(page, state["t"], timeout=SEED_SENT_WITHIN)
    elif '"state":[0,0]' in text and '"content":null' not in text:
        seeds = _seed_sent(page, state["t"], timeout=SYNC_TIMEOUT)
    else:
        return
    if seeds is None:
        return
    ack_id = re.match(r"^42(\d+)", seeds["text"]).group(1)
    # the ack: a plain one (43<id>[…]) or one with binary attachments (46<n>-<id>[…])
    page.wait_frame(rf"^4(3|6\d+-){ack_id}\[", since_ms=seeds["t"], timeout=SYNC_TIMEOUT)


def _seed_sent(page: Page, since_ms: float, timeout: float) -> dict | None:
    try:
        return page.wait_frame(r'^42\d+\["ydoc:document:update".*"initialize":true',
                               direction="out", since_ms=since_ms, timeout=timeout)
    except BrowserError:
        return None


def note_collaboration(run: FlowRun) -> None:
    admin, user = accounts(run)
    api = run.dep.api.as_user(admin.token)
    note = api.create_note(f"Shared note ({run.dep.mode})")
    # the note's "Share" dialog: the user may write
    api.share_note(note["id"], user.id, "write")
    a = run.page(run.signed_in(admin), "admin-note")
    u = run.page(run.signed_in(user), "user-note")
    open_note(a, note["id"])
    open_note(u, note["id"])

    # the admin writes two lines; the user's editor shows them as they are typed
    a.type(EDITOR, "Ada:", delay_ms=30)
    a.press("Enter")
    a.type(None, "Bob:", delay_ms=30)
    wait_text(u, "Ada:\nBob:", "the admin's lines did not reach the user")
    run.shot(u, "user-sees-admin-typing")

    # then both type at once, each on a line of their own: the same text must result in
    # both editors (typing at the very same spot at once makes open-webui's editor, even
    # alone, repeat a key now and then: that is not what this flow tests)
    a.click(f"{EDITOR} p", nth=0)
    a.press("End")
    u.click(f"{EDITOR} p", nth=1)
    u.press("End")
    typing = [a.begin_type(None, ADA_WORDS, delay_ms=50),
              u.begin_type(None, BOB_WORDS, delay_ms=50)]
    for pending in typing:
        pending.result()
    expected = f"Ada:{ADA_WORDS}\nBob:{BOB_WORDS}"
    try:
        for page in (a, u):
            wait_text(page, expected, "the editors did not converge")
    finally:
        run.shot(a, "admin-editor-both-typed")
        run.shot(u, "user-editor-both-typed")

    # the content reached open-webui: its API has it, and a reload of the page shows it
    deadline = time.monotonic() + SAVE_TIMEOUT
    saved = api.note(note["id"])["data"]["content"]["md"]
    while saved.split() != expected.split() and time.monotonic() < deadline:
        time.sleep(0.5)
        saved = api.note(note["id"])["data"]["content"]["md"]
    assert saved.split() == expected.split(), (
        f"open-webui's note holds {saved!r}, the editors {expected!r}")
    u.reload()
    u.wait_for(EDITOR)
    try:
        wait_text(u, expected, "after a reload of the note page")
    finally:
        run.shot(u, "user-after-reload")


def note_seeded(run: FlowRun) -> None:
    """A note that has content but no collaborative document yet (written through the API):
    the first editor to open it seeds the document from that content (`initialize`, acked
    with the stored state), the second editor joins and gets the same text once, and an
    edit of the second reaches the first."""
    admin, user = accounts(run)
    api = run.dep.api.as_user(admin.token)
    seed = "Seeded before anyone opened it"
    note = api.create_note(f"Seeded note ({run.dep.mode})", md=seed, html=f"<p>{seed}</p>")
    api.share_note(note["id"], user.id, "write")
    a = run.page(run.signed_in(admin), "admin-note")
    open_note(a, note["id"])
    wait_text(a, seed, "the first editor did not show the note's content")
    run.shot(a, "first-editor-seeded")
    u = run.page(run.signed_in(user), "user-note")
    open_note(u, note["id"])
    wait_text(u, seed, "the second editor did not get the seeded document")
    run.shot(u, "second-editor-joined")
    u.click(f"{EDITOR} p", nth=0)
    u.press("End")
    u.type(None, " and edited", delay_ms=30)
    wait_text(a, seed + " and edited", "the second editor's keys did not reach the first")
    run.shot(a, "first-editor-sees-edit")
