"""Who a connection is: the identity sources the gateway asks at connect and re-asks later.

Two sources, chosen once in the composition root:
- `DirectoryIdentities` (default): the token's `id` looked up in the appliance's own
  directory, which backends fill through the HTTP API;
- `openwebui.identities.OpenWebuiIdentities` (`[openwebui] url`): open-webui itself is asked
  with the tab's token.

Both verify the token's signature first (`TokenVerifier`), so a forged token never costs a
lookup.
"""
from __future__ import annotations

from typing import Any, Protocol

from .auth import AuthError, Identity, TokenVerifier
from .backends import Store


class IdentitySource(Protocol):
    # open-webui's sign-in page opens a socket before there is a token; such a socket is
    # accepted unbound and binds its user with `user-join` (only where the source allows it)
    allows_unbound: bool

    async def identify(self, token: Any) -> Identity:
        """The token's identity, or AuthError with the wire code."""

    async def record(self, token: str, identity: Identity) -> dict:
        """The user as open-webui's session pool stores it (id, name, role, email, ...)."""


class DirectoryIdentities:
    allows_unbound = False

    def __init__(self, verifier: TokenVerifier, store: Store, trust_token_claims: bool = False):
        self.verifier = verifier
        self.store = store
        self.trust_token_claims = trust_token_claims

    async def identify(self, token: Any) -> Identity:
        claims = self.verifier.verify(token)
        user = await self.store.get_user(claims["id"])
        if user is None:
            name = claims.get("name")
            if self.trust_token_claims and isinstance(name, str) and name:
                given = claims.get("role")
                role = given if isinstance(given, str) and given in ("user", "admin") else "user"
                return Identity(claims["id"], name, role)
            raise AuthError("user_unknown")
        if user.disabled:
            raise AuthError("user_disabled")
        if user.role == "pending":
            raise AuthError("user_pending")
        return Identity(user.id, user.name, user.role)

    async def record(self, token: str, identity: Identity) -> dict:
        return {"id": identity.id, "name": identity.name, "role": identity.role}
