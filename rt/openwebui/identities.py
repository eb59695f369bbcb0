"""Identities from open-webui: the token verified here, then open-webui asked who it is.

At connect (and at every re-verification) a token passes, in order:
1. its signature and expiry (`TokenVerifier`, the shared `WEBUI_SECRET_KEY`);
2. its type: browsers hold `typ: session` tokens (absent = session, as open-webui reads it);
3. open-webui's revocation markers in the shared Redis, `{p}:auth:token:{jti}:revoked` and
   `{p}:auth:user:{id}:revoked_at` (compared with `iat`): signing out or changing a password
   writes them, and a revoked token is refused at once rather than at the cache's expiry;
4. `GET /api/v1/auths/` with the token itself (cached `cache_ttl` seconds, a burst of tabs
   coalesced into one request): open-webui applies its own checks (session stamp, MFA,
   deleted user) and gives name, role and permissions.

A 401/403 from open-webui refuses the token (`token_invalid`); open-webui unreachable gives
`unavailable`, never an accepted socket. A Redis fault while reading the markers accepts
the token like open-webui does (its own policy), the API check still applies.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

from ..auth import AuthError, Identity, TokenVerifier
from .api import NotFound, OpenWebuiApi, Refused, Unavailable
from .cache import TtlCache

log = logging.getLogger("rt.openwebui")

BROWSER_TOKEN_TYPES = ("session",)
# fields open-webui leaves out of its session pool entries (socket/main.py connect)
POOL_EXCLUDED = ("profile_image_url", "profile_banner_image_url", "date_of_birth", "bio",
                 "gender", "token", "token_type", "expires_at", "permissions")


def token_key(token: str) -> str:
    """Cache key of a token: its digest (the cache never holds the secret itself)."""
    return hashlib.sha256(token.encode()).hexdigest()


class OpenWebuiIdentities:
    allows_unbound = True

    def __init__(self, verifier: TokenVerifier, api: OpenWebuiApi,
                 cache: TtlCache[tuple[str, ...], Any], redis: Any = None,
                 prefix: str = "open-webui"):
        self.verifier = verifier
        self.api = api
        self.cache = cache
        self.redis = redis
        self.prefix = prefix
        self.redis_faults = 0

    async def identify(self, token: Any) -> Identity:
        claims = self.verifier.verify(token)
        if claims.get("typ", "session") not in BROWSER_TOKEN_TYPES:
            raise AuthError("token_invalid", f"token type {claims.get('typ')!r} is not a "
                            "browser session")
        await self._check_revoked(claims)
        user = await self._session_user(token)
        if user.get("id") != claims["id"]:
            raise AuthError("token_invalid", "open-webui names another user for this token")
        role = user.get("role")
        if role == "pending":
            raise AuthError("user_pending")
        if role not in ("user", "admin"):
            raise AuthError("user_disabled", f"role {role!r} may not use the socket")
        given = user.get("name")
        name = given if isinstance(given, str) else claims["id"]
        return Identity(claims["id"], name, role)

    async def record(self, token: str, identity: Identity) -> dict:
        user = await self._session_user(token)
        return {k: v for k, v in user.items() if k not in POOL_EXCLUDED}

    async def touch(self, token: str) -> None:
        """Refresh the user's last-active time in open-webui: any authenticated request
        does it there. Also refreshes the cached answer (a role change shows)."""
        self.cache.forget(("auth", token_key(token)))
        try:
            await self._session_user(token)
        except AuthError:
            pass  # the next re-verification ends the socket

    def forget_user(self, user_id: str) -> None:
        """open-webui announced a change of this user (role, access): ask again."""
        self.cache.forget_where(lambda key, value: key[0] == "auth" and isinstance(value, dict)
                                and value.get("id") == user_id)

    async def _session_user(self, token: str) -> dict:
        key = ("auth", token_key(token))

        async def load() -> dict:
            return await self.api.session_user(token)

        try:
            return await self.cache.get(key, load)
        except Refused as exc:
            raise AuthError("token_invalid", str(exc)) from None
        except NotFound:
            raise AuthError("token_invalid", "open-webui has no session endpoint for it") from None
        except Unavailable as exc:
            raise AuthError("unavailable", str(exc)) from None

    async def _check_revoked(self, claims: dict) -> None:
        if self.redis is None:
            return
        jti, user_id = claims.get("jti"), claims["id"]
        keys = [f"{self.prefix}:auth:user:{user_id}:revoked_at"]
        if isinstance(jti, str) and jti:
            keys.append(f"{self.prefix}:auth:token:{jti}:revoked")
        try:
            # one key per call: on a Redis Cluster the two keys live in different slots
            values = [await self.redis.get(key) for key in keys]
        except Exception as exc:  # a Redis fault keeps open-webui's own policy: accept
            self.redis_faults += 1
            log.warning("revocation check skipped, Redis failed: %s", exc)
            return
        revoked_at, token_revoked = values[0], values[1] if len(values) > 1 else None
        if token_revoked:
            raise AuthError("token_revoked", "the token was signed out")
        if revoked_at:
            try:
                at = int(revoked_at)
            except (TypeError, ValueError):
                return
            iat = claims.get("iat")
            if not isinstance(iat, (int, float)) or iat <= at:
                raise AuthError("token_revoked", "the user's tokens were revoked")
