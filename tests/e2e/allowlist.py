"""Errors a page may show without failing its flow, each with the reason it is accepted.

Every flow collects, from every page it opened: console errors, uncaught page errors, and
Socket.IO `error` events and CONNECT_ERROR packets seen on the page's websockets. Whatever
no entry here matches fails the flow, so an entry must say why the error is harmless. An
entry that stops matching is not an error; remove it when its reason is gone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("console", "page", "socket")


@dataclass(frozen=True)
class Allowed:
    pattern: str  # regular expression searched in the message
    reason: str
    kinds: tuple[str, ...] = ("console",)
    flows: tuple[str, ...] = ()  # empty: every flow
    modes: tuple[str, ...] = ("alone", "appliance")

    def matches(self, kind: str, text: str, flow: str, mode: str) -> bool:
        return (kind in self.kinds and mode in self.modes
                and (not self.flows or flow in self.flows)
                and re.search(self.pattern, text) is not None)


ALLOWED: list[Allowed] = [
    Allowed(r"Cannot read properties of null \(reading 'play'\)",
            "open-webui's welcome page starts its background video on the first click when "
            "the browser refused autoplay (headless Chromium does), and that click ('Get "
            "started') has already removed the video: its own harmless slip",
            kinds=("page",)),
    Allowed(r"status of 401 \(Unauthorized\)|^Invalid token$|^Not authenticated$",
            "signing out revokes the token that both tabs of the profile hold: their next "
            "calls to open-webui (the chat and channel lists it reloads when its socket "
            "reconnects, or the signed-out page's last requests) are refused, as they must be",
            kinds=("console", "page"), flows=("sign_out",)),
    Allowed(r'^44\{"message":"token_revoked"\}$',
            "the other tab's session ends as soon as the token is revoked, before the "
            "signing-out tab removed the token from localStorage; open-webui's client "
            "reconnects with it and is refused: the revocation working",
            kinds=("socket",), flows=("sign_out",), modes=("appliance",)),
]


def unexpected(diagnostics: dict[str, dict], flow: str, mode: str) -> list[str]:
    """`diagnostics` maps page name -> the driver's diagnostics of that page; returns the
    entries nothing allows, as readable lines."""
    found = []
    for page, diag in diagnostics.items():
        entries = ([("console", e) for e in diag.get("console", [])]
                   + [("page", e) for e in diag.get("pageErrors", [])]
                   + [("socket", e) for e in diag.get("socketErrors", [])])
        for kind, entry in entries:
            text = entry.get("text", "")
            if not any(a.matches(kind, text, flow, mode) for a in ALLOWED):
                where = f" ({entry['url']})" if entry.get("url") else ""
                found.append(f"[{page}] {kind} error at {entry.get('t')} ms: {text}{where}")
    return found
