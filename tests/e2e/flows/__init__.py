"""The end-to-end flows, in the order they run on each deployment.

A flow is `flow(run: FlowRun) -> None`: it drives the browser through run (flowrun.py),
asserts what a person would see, and screenshots each state. To add one, write it in a
module here (first checked against open-webui alone, where it must pass) and list it
below; test_flows.py runs every flow listed here in every mode.
"""
from __future__ import annotations

from tests.e2e.flows import accounts, channel, chat, encrypted_dm, note, shared_chat, signout, tools

FLOWS = [
    accounts.sign_up,  # first: the first account becomes the admin
    chat.chat_stream,
    chat.second_tab,
    chat.model_in_use,
    chat.reload_mid_answer,
    chat.direct_connection,
    tools.tool_confirmation,
    shared_chat.shared_chat,
    channel.channel_live,
    encrypted_dm.encrypted_dm,
    note.note_collaboration,
    note.note_seeded,
    signout.sign_out,  # revokes a token of its own: the saved profiles stay signed in
]
