"""Random identifiers and secrets from the kernel's generator, a page at a time.

Every connect takes three (the Engine.IO sid, the Socket.IO sid, the recovery secret):
a getrandom system call each was more than the rest of their making. The bytes are read
from os.urandom 4 KiB at a time and each is handed out once; a forked child starts with a
pool of its own (the same bytes in two processes would mean the same ids).
"""
from __future__ import annotations

import base64
import os

_POOL_BYTES = 4096


class _Pool:
    def __init__(self) -> None:
        self.buffer = b""
        self.offset = 0
        self.fork_safe = False

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.buffer):
            if not self.fork_safe:
                os.register_at_fork(after_in_child=self.forget)
                self.fork_safe = True
            self.buffer = os.urandom(max(_POOL_BYTES, size))
            self.offset = 0
        start = self.offset
        self.offset = start + size
        return self.buffer[start:self.offset]

    def forget(self) -> None:
        self.buffer, self.offset = b"", 0


_pool = _Pool()


def token_urlsafe(nbytes: int) -> str:
    """`secrets.token_urlsafe(nbytes)`: URL-safe base64 of `nbytes` random bytes, unpadded."""
    return base64.urlsafe_b64encode(_pool.take(nbytes)).rstrip(b"=").decode("ascii")
