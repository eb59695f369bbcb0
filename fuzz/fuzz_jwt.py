#!/usr/bin/env python3
"""atheris harness: JWT intake (rt.auth.TokenVerifier.verify).

First byte even: the rest is a token nobody signed (UTF-8, invalid bytes replaced); it must
be refused with AuthError by an HS256 verifier and by an HS*+RS256 one. First byte odd: the
rest is `header NUL claims`, signed validly (HS256/384/512 with the secret or RS256 with the
private key, by the first byte) and also signed HS256 with the RSA public key (algorithm
confusion, always refused); a valid signature gives AuthError or claims with a non-empty
string `id` and exp/nbf honoured.

    .venv/bin/python fuzz/fuzz_jwt.py -max_total_time=20 /tmp/work fuzz/corpus/jwt
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import atheris
except ImportError:
    atheris = None

if atheris is not None and __name__ == "__main__":  # instrumented when fuzzing only
    with atheris.instrument_imports(include=["rt", "jwt", "fuzzlib"]):
        import fuzzlib
else:
    import fuzzlib

ALGS = ("HS256", "HS384", "HS512", "RS256")


def TestOneInput(data: bytes) -> None:
    if not data:
        fuzzlib.check_jwt_forged("")
        return
    mode, rest = data[0], data[1:]
    if mode % 2 == 0:
        fuzzlib.check_jwt_forged(rest.decode("utf-8", "replace"))
    else:
        header, _, claims = rest.partition(b"\0")
        fuzzlib.check_jwt_signed(header, claims, ALGS[(mode >> 1) % len(ALGS)])


def main() -> None:
    fuzzlib.fuzz(TestOneInput)


if __name__ == "__main__":
    main()
