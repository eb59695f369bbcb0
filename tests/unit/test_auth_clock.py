"""Token times against a clock that jumps (issue 8: clock jumps)."""
import time

import jwt
import pytest

from rt.auth import AuthError, TokenVerifier

SECRET = "s" * 64


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def token(**claims):
    return jwt.encode({"id": "u", **claims}, SECRET, algorithm="HS256")


def test_expiry_follows_the_clock_with_leeway():
    clock = Clock()
    v = TokenVerifier(SECRET, leeway=30, clock=clock)
    tok = token(exp=int(clock.now) + 3600)
    assert v.verify(tok)["id"] == "u"
    clock.now += 3600 + 20  # past exp but within the leeway
    assert v.verify(tok)["id"] == "u"
    clock.now += 20  # a jump forward past exp + leeway
    with pytest.raises(AuthError) as err:
        v.verify(tok)
    assert err.value.code == "token_expired"
    clock.now -= 7200  # the clock jumps back: the same token is valid again, as wall time says
    assert v.verify(tok)["id"] == "u"


def test_not_before_and_malformed_times():
    clock = Clock()
    v = TokenVerifier(SECRET, leeway=5, clock=clock)
    with pytest.raises(AuthError) as err:
        v.verify(token(nbf=int(clock.now) + 60))
    assert err.value.code == "token_invalid"
    assert v.verify(token(nbf=int(clock.now) + 3))["id"] == "u"
    for bad in ("soon", True, [1], float("inf"), float("nan")):
        with pytest.raises(AuthError) as err:
            v.verify(token(exp=bad))
        assert err.value.code == "token_invalid"
