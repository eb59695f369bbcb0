"""Who is calling: JWT verification for browsers, the API key for backends."""
from __future__ import annotations

import hmac
import math
import time
import warnings
from dataclasses import dataclass

import jwt

HMAC_ALGORITHMS = {"HS256", "HS384", "HS512"}
MAX_TOKEN_BYTES = 8192  # far above any real token; a hostile blob is refused unparsed


class AuthError(Exception):
    """A refused token. `code` is the wire code (protocol §2)."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(detail or code)
        self.code = code


@dataclass(frozen=True)
class Identity:
    """The verified user of a connection; never changes for the life of a sid."""

    id: str
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def public(self) -> dict:
        return {"id": self.id, "name": self.name}


class TokenVerifier:
    def __init__(self, secret: str, algorithms: tuple[str, ...] = ("HS256",),
                 public_key: str | None = None, leeway: float = 30.0,
                 clock=time.time):
        if not algorithms or any(a.lower() == "none" for a in algorithms):
            raise ValueError("an explicit list of signing algorithms is required, never 'none'")
        self.algorithms = tuple(algorithms)
        self.secret = secret
        self.public_key = public_key
        self.leeway = leeway
        # expiry is judged against this clock (wall time: `exp` is wall time), injectable so
        # that clock jumps can be tested
        self.clock = clock
        # PyJWT warns on HMAC keys shorter than the hash; open-webui deployments often have
        # such a secret, so the warning is given once at start-up (app.py), not per token.
        self.short_secret = len(secret.encode()) < 64

    def _key_for(self, alg: str):
        return self.secret if alg in HMAC_ALGORITHMS else self.public_key

    def verify(self, token: object) -> dict:
        """The token's claims, or AuthError(token_missing | token_invalid | token_expired)."""
        if token is None or token == "":
            raise AuthError("token_missing")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token_invalid", "token is not a string of sane length")
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg not in self.algorithms:
                raise AuthError("token_invalid", f"algorithm {alg!r} is not accepted")
            key = self._key_for(alg)
            if not key:
                raise AuthError("token_invalid", f"no key for {alg}")
            with warnings.catch_warnings():
                if self.short_secret:
                    warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                claims = jwt.decode(
                    token, key, algorithms=[alg],
                    options={"require": ["id"], "verify_aud": False, "verify_exp": False,
                             "verify_nbf": False, "verify_iat": False},
                )
        except AuthError:
            raise
        except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
            raise AuthError("token_invalid", str(exc)) from exc
        if not isinstance(claims.get("id"), str) or not claims["id"]:
            raise AuthError("token_invalid", "claim 'id' must be a non-empty string")
        self._check_times(claims)
        return claims

    def _check_times(self, claims: dict) -> None:
        now = self.clock()
        for name in ("exp", "nbf"):
            value = claims.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                # NaN or Infinity would make the comparisons below always false
                raise AuthError("token_invalid", f"claim {name!r} must be a finite number")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if exp is not None and now > exp + self.leeway:
            raise AuthError("token_expired", "the token has expired")
        if nbf is not None and now < nbf - self.leeway:
            raise AuthError("token_invalid", "the token is not valid yet")

    def issue(self, user_id: str, expires_in: float | None, extra: dict | None = None) -> str:
        """Sign a token the way open-webui's backend does (used by `rt-appliance token`)."""
        alg = next((a for a in self.algorithms if a in HMAC_ALGORITHMS), None)
        if alg is None:
            raise ValueError("tokens can only be issued with an HMAC algorithm configured")
        claims = {"id": user_id, **(extra or {})}
        if expires_in is not None:
            claims["exp"] = int(time.time() + expires_in)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            return jwt.encode(claims, self.secret, algorithm=alg)


def api_key_matches(expected: str, authorization: str | None) -> bool:
    """`Authorization: Bearer <key>`, compared in constant time."""
    if not expected or not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[7:].strip().encode(), expected.encode())
