"""Sign-up: the first person to sign up becomes open-webui's admin; after the admin opens
sign-ups, a second person signs up and gets the default role (`user`, from
DEFAULT_USER_ROLE). Every later flow signs in as these two."""
from __future__ import annotations

from tests.e2e.deployment import Account
from tests.e2e.flowrun import FlowRun, dismiss_changelog, open_sidebar, token_of

ACCOUNTS = {
    "admin": ("Ada Admin", "ada@example.com", "ada-e2e-password"),
    "user": ("Bob User", "bob@example.com", "bob-e2e-password"),
}


def _sign_up(run: FlowRun, key: str, first: bool) -> tuple[Account, object]:
    name, email, password = ACCOUNTS[key]
    ctx = run.anonymous(key)
    page = run.page(ctx, f"sign-up-{key}")
    page.goto("/auth")
    if first:
        # the welcome screen of an open-webui without users
        run.shot(page, "welcome")
        page.click("text=Get started")
    else:
        page.click("button:has-text('Sign up')")
    page.fill("#name", name)
    page.fill("#email", email)
    page.fill("#password", password)
    run.shot(page, f"{key}-form")
    page.click("button[type=submit]")
    page.wait_for("#chat-input", timeout=30)
    dismiss_changelog(page)
    open_sidebar(page)
    account = Account(key, name, email, password)
    account.token = token_of(page)
    me = run.dep.api.as_user(account.token).me()
    account.id, account.role = me["id"], me["role"]
    account.storage_state = ctx.storage_state()
    run.dep.accounts[key] = account
    run.shot(page, f"{key}-signed-up")
    return account, page


def create_accounts(run: FlowRun) -> dict:
    """Sign up whichever of the two accounts is missing; returns {key: page} of those signed
    up now."""
    pages = {}
    if "admin" not in run.dep.accounts:
        admin, pages["admin"] = _sign_up(run, "admin", first=True)
        # Admin Settings > General > "Enable New Sign Ups": open-webui closes sign-ups once
        # its first user exists
        run.dep.api.as_user(admin.token).enable_signup()
    if "user" not in run.dep.accounts:
        _, pages["user"] = _sign_up(run, "user", first=False)
    return pages


def accounts(run: FlowRun) -> tuple[Account, Account]:
    """The admin and the user, signed up first when this flow runs alone (pytest -k)."""
    if len(run.dep.accounts) < 2:
        create_accounts(run)
    return run.dep.accounts["admin"], run.dep.accounts["user"]


def sign_up(run: FlowRun) -> None:
    assert not run.dep.accounts, "sign_up must be the first flow of a deployment"
    pages = create_accounts(run)
    admin, user = run.dep.accounts["admin"], run.dep.accounts["user"]
    assert admin.role == "admin", admin
    assert user.role == "user", user
    for key, page in pages.items():
        # the socket opened on the sign-in page is bound to the user after signing in
        # (user-join); it must have been accepted
        page.wait_socket_connected()
        # the model of the stand-in is offered
        page.wait_for("text=standin-model", nth=0)
        run.shot(page, f"{key}-home")
