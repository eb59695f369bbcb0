"""rt/core/tokens.py: pooled random tokens are shaped like secrets.token_urlsafe's, never
repeat, and a forked child does not hand out its parent's bytes."""
import os
import re
import secrets

from rt.core.tokens import token_urlsafe


def test_same_shape_as_secrets():
    for n in (1, 15, 18, 48, 5000):  # 5000: more than one pool at once
        ours, theirs = token_urlsafe(n), secrets.token_urlsafe(n)
        assert len(ours) == len(theirs)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", ours)


def test_no_token_repeats_across_refills():
    seen = {token_urlsafe(15) for _ in range(5000)}  # about 18 refills of the pool
    assert len(seen) == 5000


def test_a_forked_child_draws_its_own_bytes():
    token_urlsafe(15)  # the parent has a pool with bytes left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next token and leave at once
        os.write(write, token_urlsafe(15).encode())
        os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 64).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert child and child != token_urlsafe(15)
