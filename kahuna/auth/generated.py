"""Secrets Kahuna generates for itself when the configuration gives none.

Each lives in its own file under the data directory, created once with mode 0600 (O_EXCL, so two
processes starting at once cannot both write one) and reused on every later start. The caller is
told whether the secret was created now, so the master key can be shown exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kahuna.auth.secrets import generate_key


@dataclass(frozen=True)
class Generated:
    value: str
    path: Path
    created: bool


def ensure_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def ensure_secret(data_dir: Path, name: str, generate: Callable[[], str]) -> Generated:
    """Read `data_dir/name`, or create it with `generate()` (mode 0600) when it does not exist."""
    path = data_dir / name
    try:
        value = path.read_text(encoding="ascii").strip()
        if value:
            return Generated(value, path, created=False)
        raise ValueError(f"{path} is empty")
    except FileNotFoundError:
        pass
    value = generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(value + "\n")
        out.flush()
        os.fsync(out.fileno())
    return Generated(value, path, created=True)


def master_api_key(data_dir: Path) -> Generated:
    return ensure_secret(data_dir, "master-api-key", lambda: generate_key(64))


def jwt_signature(data_dir: Path) -> Generated:
    return ensure_secret(data_dir, "jwt-signature", lambda: generate_key(64))


def server_secret(data_dir: Path) -> Generated:
    """Keys the digests of API keys and seals agent keys; back it up with the database."""
    return ensure_secret(data_dir, "server-secret", lambda: generate_key(64))
