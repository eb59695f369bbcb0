"""Errors and flags every layer speaks: the bottom of the import graph (imports nothing of rt)."""
from __future__ import annotations

from contextvars import ContextVar


class StoreError(Exception):
    """The store cannot do what was asked (disk full, read-only, unreachable)."""


# Set by a caller that must hear when an emit did not reach the other nodes (the HTTP API:
# a backend told 202 must be able to trust it). A multi-node client manager then raises
# StoreError where it otherwise logs the failed publish and drops the cross-node part.
delivery_required: ContextVar[bool] = ContextVar("delivery_required", default=False)


class UsageFull(Exception):
    """A usage touch refused by a cap; nothing changed. `scope` is "connection" (the
    session holds its maximum of models) or "total" (the set holds its maximum)."""

    def __init__(self, scope: str) -> None:
        super().__init__(scope)
        self.scope = scope
