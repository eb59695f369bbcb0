"""The HMAC fast path and the verified-token cache decide exactly as PyJWT does (issue 18)."""
import base64
import hashlib
import hmac
import json
import time
import warnings

import jwt
import pytest

from rt import auth
from rt.auth import AuthError, TokenVerifier
from tests.unit.test_auth_clock import SECRET, Clock


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(header: object, claims: object, secret: str = SECRET, alg: str = "sha256",
           raw_claims: bytes | None = None) -> str:
    head = b64(json.dumps(header).encode())
    body = b64(raw_claims if raw_claims is not None else json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), getattr(hashlib, alg))
    return f"{head}.{body}.{b64(mac.digest())}"


def reference(v: TokenVerifier, token: object) -> tuple[str, object]:
    """What verification answered before the fast path: PyJWT, then the times."""
    try:
        if token is None or token == "":
            raise AuthError("token_missing")
        if not isinstance(token, str) or len(token) > auth.MAX_TOKEN_BYTES:
            raise AuthError("token_invalid")
        claims = v._verify_pyjwt(token)
        v._check_times(claims)
        return "ok", claims
    except AuthError as exc:
        return exc.code, None


def outcome(v: TokenVerifier, token: object) -> tuple[str, object]:
    try:
        return "ok", v.verify(token)
    except AuthError as exc:
        return exc.code, None


NOW = int(time.time())
H256 = {"alg": "HS256", "typ": "JWT"}
GOOD = signed(H256, {"id": "u1", "exp": NOW + 3600})
CASES = [
    GOOD,
    signed({"alg": "HS384"}, {"id": "u1"}, alg="sha384"),
    signed({"alg": "HS512", "kid": "k1"}, {"id": "u1", "name": "N", "role": "admin"},
           alg="sha512"),
    signed(H256, {"id": "u1", "exp": NOW - 3600}),  # expired
    signed(H256, {"id": "u1", "nbf": NOW + 3600}),  # not yet valid
    signed(H256, {"id": "u1", "exp": "soon"}),
    signed(H256, {"id": "u1", "sub": 5}),  # PyJWT: sub must be a string
    signed(H256, {"id": "u1", "jti": 5}),  # PyJWT: jti must be a string
    signed(H256, {"id": "u1", "sub": "s", "jti": "j", "typ": "session", "iat": NOW}),
    signed(H256, {"id": None}),
    signed(H256, {"name": "no id"}),
    signed(H256, {"id": 7}),
    signed(H256, {"id": ""}),
    signed(H256, ["id", "u1"]),
    signed(H256, None, raw_claims=b"not json"),
    signed(H256, None, raw_claims=b'{"id": "u1", "exp": NaN}'),
    signed(H256, None, raw_claims=b'{"id": "u1", "id": "u2"}'),
    signed({"alg": "HS256", "kid": 5}, {"id": "u1"}),
    signed({"alg": "HS256", "crit": ["b64"], "b64": False}, {"id": "u1"}),
    signed({"alg": "HS256", "crit": ["exp"]}, {"id": "u1"}),
    signed({"alg": "HS256", "jku": "https://x"}, {"id": "u1"}),
    signed({"alg": "none"}, {"id": "u1"}),
    signed({"alg": "RS256"}, {"id": "u1"}),
    signed({"alg": "HS384"}, {"id": "u1"}),  # header says HS384, signed with SHA-256
    signed({}, {"id": "u1"}),
    signed(["HS256"], {"id": "u1"}),
    signed(H256, {"id": "u1"}, secret="another-secret" * 5),
    GOOD[:-2] + ("AA" if not GOOD.endswith("AA") else "BB"),  # signature changed
    GOOD + "=",  # padding
    GOOD.replace(".", "..", 1),
    GOOD + ".x",
    GOOD.rsplit(".", 1)[0],
    " " + GOOD,
    GOOD[:-1] + chr(ord(GOOD[-1]) ^ 1),  # the last character's unused bits
    "a.b.c",
    "...",
    "x" * (auth.MAX_TOKEN_BYTES + 1),
    "",
    None,
    42,
    "é.é.é",
]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_the_fast_path_decides_like_pyjwt(index):
    token = CASES[index]
    v = TokenVerifier(SECRET, algorithms=("HS256", "HS384", "HS512"))
    expected = reference(v, token)
    assert outcome(v, token) == expected
    assert outcome(v, token) == expected  # and so does the cache, the second time


def test_configured_algorithms_still_bind():
    v = TokenVerifier(SECRET)  # HS256 only
    token = signed({"alg": "HS512"}, {"id": "u1"}, alg="sha512")
    assert outcome(v, token) == ("token_invalid", None)


def test_tokens_pyjwt_signs_take_the_fast_path_and_are_kept():
    v = TokenVerifier(SECRET)
    token = v.issue("u1", 3600, {"name": "N"})
    assert v.verify(token)["name"] == "N"
    assert (v.cache_misses, v.cache_hits) == (1, 0)
    claims = v.verify(token)
    assert claims["id"] == "u1" and v.cache_hits == 1
    claims["id"] = "changed"  # a caller's copy: the kept claims stay as verified
    assert v.verify(token)["id"] == "u1"


def test_a_kept_signature_with_another_payload_is_refused():
    v = TokenVerifier(SECRET)
    token = v.issue("u1", 3600)
    v.verify(token)
    head, _body, sig = token.split(".")
    forged = f"{head}.{b64(json.dumps({'id': 'admin'}).encode())}.{sig}"
    assert outcome(v, forged)[0] == "token_invalid"
    assert v.verify(token)["id"] == "u1"


def test_a_kept_token_expires():
    clock = Clock()
    v = TokenVerifier(SECRET, leeway=30, clock=clock)
    token = signed(H256, {"id": "u1", "exp": int(clock.now) + 60})
    assert v.verify(token)["id"] == "u1"
    clock.now += 95
    with pytest.raises(AuthError) as err:
        v.verify(token)
    assert err.value.code == "token_expired"
    assert len(v._verified) == 0  # dropped: it will not pass again


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(auth, "MAX_VERIFIED_TOKENS", 8)
    v = TokenVerifier(SECRET)
    tokens = [v.issue(f"u{i}", 3600) for i in range(20)]
    for token in tokens:
        v.verify(token)
    assert len(v._verified) == 8
    assert v.verify(tokens[-1])["id"] == "u19" and v.cache_hits == 1
    assert v.verify(tokens[0])["id"] == "u0" and v.cache_misses == 21  # verified again


def test_refusals_are_not_kept():
    v = TokenVerifier(SECRET)
    bad = signed(H256, {"id": "u1"}, secret="x" * 64)
    for _ in range(3):
        assert outcome(v, bad)[0] == "token_invalid"
    assert len(v._verified) == 0


def test_a_secret_pyjwt_refuses_as_an_hmac_key_is_never_used_by_the_fast_path():
    pem = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"
    v = TokenVerifier(pem)
    assert v._hmac_key is None
    token = signed(H256, {"id": "u1"}, secret=pem)
    with pytest.raises(jwt.InvalidKeyError):  # PyJWT's answer, as before
        v.verify(token)


def test_short_secrets_verify_without_warnings():
    v = TokenVerifier("short")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = jwt.encode({"id": "u"}, "short", algorithm="HS256")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert v.verify(token)["id"] == "u"
