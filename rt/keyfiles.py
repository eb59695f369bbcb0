"""Secrets generated on first start and kept in the data directory (mode 0600)."""
from __future__ import annotations

import os
import secrets as _secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any


def ensure_secret(data_dir: str, name: str) -> tuple[str, Path, bool]:
    """(value, file, created). The file is created atomically with mode 0600, so a
    concurrent first start of two processes ends with one secret, never a torn one."""
    path = Path(data_dir) / name
    try:
        return path.read_text().strip(), path, False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = _secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), path, False
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value, path, True


def resolve_secrets(settings: Any, announce: Callable[[str], None] | None = None) -> Any:
    """Fill empty secret_key / api_key from files in the data dir, generated once."""
    for name, file in (("secret_key", "secret_key"), ("api_key", "api_key")):
        if getattr(settings.auth, name):
            continue
        value, path, created = ensure_secret(settings.state.data_dir, file)
        settings = settings.replace("auth", name, value, source=f"generated {path}")
        if announce is not None:
            announce(f"{'generated' if created else 'using'} {name} in {path} (mode 0600)")
    return settings
