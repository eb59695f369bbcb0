"""A tool that asks the person in the browser before going on: open-webui runs the tool,
the tool calls `__event_call__` (a Socket.IO call with an ack, from open-webui's process to
the tab that sent the message, `sio.call` across processes in the appliance mode), the tab
shows a confirmation dialog, the click answers the call, and the answer reaches the model.
"""
from __future__ import annotations

from tests.e2e.flowrun import FlowRun
from tests.e2e.flows.accounts import accounts
from tests.e2e.flows.chat import send, wait_final

TOOL_ID = "e2e_confirm"
TOOL_FUNCTION = "ask_confirmation"
DIALOG_TITLE = "E2E confirmation"
TOOL_CODE = f'''"""
title: E2E confirm
description: Asks the person in the browser to confirm.
version: 0.1.0
"""


class Tools:
    async def {TOOL_FUNCTION}(self, __event_call__=None) -> str:
        """
        Ask the person in the browser to confirm before going on.
        """
        answer = await __event_call__({{
            "type": "confirmation",
            "data": {{"title": "{DIALOG_TITLE}", "message": "Shall the tool go on?"}},
        }})
        return "confirmed" if answer else "declined"
'''


def ensure_tool(run: FlowRun, token: str) -> None:
    """Workspace > Tools > New: the admin adds the tool once per deployment."""
    api = run.dep.api.as_user(token)
    existing = api.call("GET", "/api/v1/tools/")
    if not any(t.get("id") == TOOL_ID for t in existing):
        api.call("POST", "/api/v1/tools/create", {
            "id": TOOL_ID, "name": "E2E confirm", "content": TOOL_CODE,
            "meta": {"description": "Asks the person in the browser to confirm.",
                     "manifest": {}}})


def tool_confirmation(run: FlowRun) -> None:
    admin, _ = accounts(run)
    ensure_tool(run, admin.token)
    page = run.page(run.signed_in(admin), "tool")
    # a chat with the tool switched on (the same as ticking it under "+" > Tools)
    page.goto(f"/?tools={TOOL_ID}")
    page.wait_for("#chat-input")
    page.wait_socket_connected()
    send(page, f"Check with me first [tool={TOOL_FUNCTION}] [delay=0.05]")
    page.wait_for(f"text={DIALOG_TITLE}", timeout=30)
    run.shot(page, "confirmation-asked")
    page.click("button:has-text('Confirm')", nth=-1)
    final = wait_final(page)
    run.shot(page, "answer-after-confirming")
    assert "tool said: confirmed" in final, final
