"""What one flow runs with: the deployment, browser contexts signed in as its accounts,
numbered screenshots under artifacts/e2e/<mode>/, and the error check at the end.

A flow is a function `flow(run: FlowRun) -> None` (see flows/__init__.py): it opens pages
through `run`, acts like a person would, asserts what the pages show, and takes a
screenshot of each state. test_flows.py then fails it when any page showed an error that
allowlist.py does not accept (`run.errors()`).
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

from tests.e2e import allowlist
from tests.e2e.browser import Browser, Context, Page
from tests.e2e.deployment import Account, Deployment

SIGN_IN_TIMEOUT = 30.0  # seconds from "Sign in" to the chat input


class FlowRun:
    def __init__(self, dep: Deployment, browser: Browser, flow: str, artifacts: Path) -> None:
        self.dep, self.browser, self.flow = dep, browser, flow
        self.artifacts = artifacts
        self._shots = itertools.count(1)
        self._contexts: list[Context] = []
        self._pages: list[Page] = []
        self._names = itertools.count(1)

    # --- browser contexts and pages --------------------------------------------------------

    def _context(self, label: str, storage_state: dict | None = None) -> Context:
        ctx = self.browser.context(f"{self.flow}-{label}-{next(self._names)}", self.dep.url,
                                   storage_state)
        self._contexts.append(ctx)
        return ctx

    def anonymous(self, label: str) -> Context:
        """A fresh browser profile: nobody signed in."""
        return self._context(label)

    def signed_in(self, account: Account, label: str | None = None) -> Context:
        """A browser profile where `account` is signed in: the first time through the sign-in
        form, afterwards from the saved profile (cookies and localStorage, one token)."""
        if account.storage_state is None:
            ctx = self._context(label or account.key)
            page = self.page(ctx, "sign-in")
            sign_in(page, account)
            account.storage_state = ctx.storage_state()
            page.close()
            self._pages.remove(page)
            return ctx
        return self._context(label or account.key, account.storage_state)

    def fresh_sign_in(self, account: Account, label: str) -> tuple[Context, Page]:
        """A new profile signed in through the form, with a token of its own (to revoke it
        without touching the saved one)."""
        ctx = self._context(label)
        page = self.page(ctx, label)
        sign_in(page, account)
        return ctx, page

    def page(self, ctx: Context, label: str) -> Page:
        page = ctx.page(f"{ctx.name}/{label}")
        self._pages.append(page)
        return page

    # --- evidence ----------------------------------------------------------------------------

    @property
    def pages(self) -> list[Page]:
        return list(self._pages)

    def shot(self, page: Page, label: str) -> Path:
        name = re.sub(r"[^a-z0-9]+", "-", f"{self.flow}-{next(self._shots):02d}-{label}".lower())
        path = self.artifacts / f"{name}.png"
        page.screenshot(path)
        return path

    def diagnostics(self) -> dict[str, dict]:
        found = {}
        for page in self._pages:
            try:
                found[page.name] = page.diagnostics()
            except Exception as exc:  # a closed page: nothing more to read
                found[page.name] = {"console": [], "pageErrors": [],
                                    "socketErrors": [], "unreadable": str(exc)}
        return found

    def sockets(self) -> dict[str, list]:
        """Every page's websockets with their last frames, for failure reports."""
        found = {}
        for page in self._pages:
            try:
                found[page.name] = page.sockets(frames=30)["sockets"]
            except Exception:
                continue
        return found

    def errors(self) -> list[str]:
        return allowlist.unexpected(self.diagnostics(), self.flow, self.dep.mode)

    def close(self) -> None:
        for ctx in self._contexts:
            try:
                ctx.close()
            except Exception:
                pass
        self._contexts.clear()
        self._pages.clear()


# --- steps every flow uses -------------------------------------------------------------------

def dismiss_changelog(page: Page) -> None:
    """open-webui greets an admin with its release notes once per version."""
    if page.count("text=Okay, Let's Go!"):
        page.click("text=Okay, Let's Go!")


def open_sidebar(page: Page) -> None:
    """The sidebar, and its Channels section, stay open on the next page loads of the
    profile: open-webui keeps those choices in localStorage."""
    page.evaluate("() => { localStorage.sidebar = 'true';"
                  " localStorage['sidebar-channels-folder-state'] = 'true'; }")


def sign_in(page: Page, account: Account) -> None:
    page.goto("/auth")
    page.fill("#email", account.email)
    page.fill("#password", account.password)
    page.click("button[type=submit]")
    page.wait_for("#chat-input", timeout=SIGN_IN_TIMEOUT)
    dismiss_changelog(page)
    open_sidebar(page)


def token_of(page: Page) -> str:
    return page.evaluate("() => localStorage.token")
