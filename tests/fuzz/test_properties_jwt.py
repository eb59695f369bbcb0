"""JWT intake (rt.auth.TokenVerifier.verify): only AuthError; nothing unsigned, signed
with another key or algorithm-confused is accepted; a validly signed token is accepted
exactly when its claims are acceptable."""
from __future__ import annotations

import json
import math

import fuzzlib
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rt.auth import AuthError

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

B64 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/",
              max_size=40)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8)
ALGS = st.sampled_from(["HS256", "HS384", "HS512", "RS256", "none", "None", "ES256", "hs256",
                        ""]) | JSONISH
HEADERS = st.fixed_dictionaries({"alg": ALGS}, optional={
    "typ": st.sampled_from(["JWT", "jwt", 5]), "kid": JSONISH, "crit": JSONISH,
    "jku": st.just("https://evil.example/keys"), "b64": st.booleans()})
TIME = (st.none() | st.integers(-2**70, 2**70) | st.floats() | st.booleans()
        | st.text(max_size=6) | st.sampled_from([fuzzlib.NOW, fuzzlib.NOW - 31, fuzzlib.NOW + 31,
                                                 fuzzlib.NOW - 29, fuzzlib.NOW + 29]))
CLAIMS = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=8) | JSONISH, "exp": TIME, "nbf": TIME, "iat": TIME,
    "name": JSONISH, "role": JSONISH, "extra": JSONISH})


def _segment(value) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return fuzzlib.b64url(raw)


@FAST
@given(st.one_of(
    st.text(max_size=80),
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", B64, B64, B64),
    st.builds(lambda h, c, sig: f"{_segment(h)}.{_segment(c)}.{sig}", HEADERS, CLAIMS, B64),
    st.builds(lambda h, c: f"{_segment(h)}.{_segment(c)}.", HEADERS, CLAIMS),
    st.none(), st.integers(), st.binary(max_size=10), st.lists(st.text(max_size=3)),
))
@example("x" * 9000)
@example(_segment({"alg": "none"}) + "." + _segment({"id": "alice"}) + ".")
@example(_segment(b'{"alg":"HS256","x":' + b"[" * 3000 + b"]" * 3000 + b"}") + ".e30.x")
@example(_segment({"alg": "HS256"}) + "." + _segment(b"[" * 3000 + b"]" * 3000) + ".x")
@example(_segment({"alg": "HS256"}) + "." + _segment(b"\xff\xfe") + ".x")
def test_tokens_nobody_signed_are_refused(token):
    fuzzlib.check_jwt_forged(token)


def _acceptable(claims: dict) -> bool | None:
    """The documented rule; None where it says nothing (non-finite times)."""
    if not isinstance(claims.get("id"), str) or not claims["id"]:
        return False
    verdict: bool | None = True
    for name in ("exp", "nbf"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            verdict = None
            continue
        if name == "exp" and fuzzlib.NOW > value + 30:
            return False
        if name == "nbf" and fuzzlib.NOW < value - 30:
            return False
    return verdict


@FAST
@given(CLAIMS, st.sampled_from(["HS256", "HS384", "HS512", "RS256"]),
       st.fixed_dictionaries({}, optional={"typ": st.just("JWT"), "kid": st.text(max_size=4)}))
@example({"id": "alice", "exp": fuzzlib.NOW - 30}, "HS256", {})
@example({"id": "alice", "exp": fuzzlib.NOW - 31}, "HS256", {})
@example({"id": "alice", "nbf": fuzzlib.NOW + 31}, "HS512", {})
@example({"id": "alice", "exp": True}, "HS256", {})
@example({"id": "alice", "exp": 2**70}, "RS256", {})
@example({"id": ""}, "HS256", {})
def test_signed_tokens_follow_the_rule(claims, alg, header):
    header = {**header, "alg": alg}
    got = fuzzlib.check_jwt_signed(json.dumps(header).encode(), json.dumps(claims).encode(),
                                   alg)
    expected = _acceptable(claims)
    if expected is not None:
        assert (got is not None) == expected, (claims, got)


@FAST
@given(st.binary(max_size=60), st.binary(max_size=60), st.sampled_from(["HS256", "RS256"]))
@example(b'{"alg":"HS256","crit":["exp"]}', b'{"id":"a"}', "HS256")
@example(b'{"alg":"HS256"}', b'{"id":"a","exp":NaN}', "HS256")
@example(b'{"alg":"HS256"}', b'{"id":"a","id":""}', "HS256")
def test_signed_arbitrary_bytes(header, claims, alg):
    try:
        json.loads(header)
    except ValueError:
        header_ok = False
    else:
        header_ok = True
    if header_ok:
        fuzzlib.check_jwt_signed(header, claims, alg)
    else:  # a header that is not JSON: refused however it is signed
        token = fuzzlib.sign(header, claims, fuzzlib.SECRET, "HS256")
        for verifier in fuzzlib.verifiers():
            try:
                verifier.verify(token)
            except AuthError:
                continue
            raise AssertionError(f"accepted a token whose header is not JSON: {header!r}")
