"""Who is calling: JWT verification for browsers, the API key for backends."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
import warnings
from dataclasses import dataclass

import jwt
from jwt.algorithms import HMACAlgorithm

HMAC_ALGORITHMS = {"HS256", "HS384", "HS512"}
MAX_TOKEN_BYTES = 8192  # far above any real token; a hostile blob is refused unparsed
# Tokens whose signature was verified, kept so that the token a tab sends again (its
# `user-join`, its reconnects, its user's other tabs, the periodic re-verification) is not
# checked again: at most this many (the oldest dropped first), about 0.2 KB each.
MAX_VERIFIED_TOKENS = 1024

_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
# a compact JWS in its canonical form: three non-empty base64url segments, no padding
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# header parameters with which PyJWT verifies a token as it is (`kid` must be a string)
_PLAIN_HEADER = frozenset({"alg", "typ", "kid"})


def _digest(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=16).digest()


def _segment(text: str) -> bytes | None:
    """A base64url segment's bytes; None unless it is canonical (PyJWT refuses the rest)."""
    if len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        return None
    return raw


class AuthError(Exception):
    """A refused token. `code` is the wire code (protocol §2)."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(detail or code)
        self.code = code


@dataclass(frozen=True, slots=True)
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
        # the secret as the HMAC fast path uses it: only one PyJWT accepts as an HMAC key
        # (not empty, not an asymmetric key or a JWK), decided once
        self._hmac_key: bytes | None = None
        try:
            self._hmac_key = HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
        except (jwt.InvalidKeyError, ValueError, TypeError):
            pass
        # digest of the token → its claims' JSON, for the tokens the fast path verified
        # (compact: about 0.2 KB each; the token itself is held by its session)
        self._verified: dict[bytes, bytes] = {}
        self.cache_hits = self.cache_misses = 0

    def _key_for(self, alg: str):
        return self.secret if alg in HMAC_ALGORITHMS else self.public_key

    def verify(self, token: object) -> dict:
        """The token's claims, or AuthError(token_missing | token_invalid | token_expired).

        A token verified before is found by its digest (BLAKE2b, 128 bits, of the whole
        token): the signature is not checked again, its times are, on every call. What a token
        means beyond its signature (open-webui's revocation markers, the user's state) is
        the identity sources' concern and is asked every time."""
        if token is None or token == "":
            raise AuthError("token_missing")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token_invalid", "token is not a string of sane length")
        key = _digest(token)
        raw_claims = self._verified.get(key)
        if raw_claims is not None:
            self.cache_hits += 1
            claims = json.loads(raw_claims)  # verified: what the fast path decoded before
            try:
                self._check_times(claims)
            except AuthError:
                del self._verified[key]  # expired: it will never pass again
                raise
            return claims
        self.cache_misses += 1
        verified = self._verify_hmac(token)
        if verified is None:
            claims = self._verify_pyjwt(token)  # anything unusual, and every refusal
            self._check_times(claims)
            return claims
        claims, raw_claims = verified
        self._check_times(claims)
        if len(self._verified) >= MAX_VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[key] = raw_claims
        return claims

    def _verify_hmac(self, token: str) -> tuple[dict, bytes] | None:
        """The claims (and their JSON) of an HMAC-signed token in its plain form, verified
        without PyJWT's generic machinery; None for anything else, refusals included:
        PyJWT decides those, so what is accepted, and why a token is refused, stays
        PyJWT's."""
        key = self._hmac_key
        if key is None or _COMPACT.fullmatch(token) is None:
            return None
        head, body, sig = token.split(".")
        raw_header, raw_claims, mac = _segment(head), _segment(body), _segment(sig)
        if raw_header is None or raw_claims is None or mac is None:
            return None
        try:
            header = json.loads(raw_header)
        except (ValueError, RecursionError):
            return None
        if not isinstance(header, dict) or not header.keys() <= _PLAIN_HEADER:
            return None
        alg = header.get("alg")
        if (not isinstance(alg, str) or alg not in self.algorithms or alg not in _HASHES
                or not isinstance(header.get("kid", ""), str)):
            return None
        expected = hmac.new(key, f"{head}.{body}".encode("ascii"), _HASHES[alg]).digest()
        if not hmac.compare_digest(expected, mac):
            return None
        try:
            claims = json.loads(raw_claims)
        except (ValueError, RecursionError):
            return None
        # PyJWT's checks with the options of _verify_pyjwt: `id` required (not null),
        # `sub` and `jti` strings where present
        if (not isinstance(claims, dict) or claims.get("id") is None
                or not isinstance(claims.get("sub", ""), str)
                or not isinstance(claims.get("jti", ""), str)):
            return None
        self._check_id(claims)
        return claims, raw_claims

    def _verify_pyjwt(self, token: str) -> dict:
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
        self._check_id(claims)
        return claims

    @staticmethod
    def _check_id(claims: dict) -> None:
        if not isinstance(claims.get("id"), str) or not claims["id"]:
            raise AuthError("token_invalid", "claim 'id' must be a non-empty string")

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
