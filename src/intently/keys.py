"""API keys: a public write key for browsers and SDKs, a secret key for administration.

The write key may only send events (and, later, ask for decisions); it is visible in every
page that loads the tag. The secret key may do everything. On first start the engine
creates both, stores them in `<data dir>/keys.json` (mode 0600) and prints them;
`INTENTLY_WRITE_KEY` and `INTENTLY_SECRET_KEY` override the stored ones.
"""

from __future__ import annotations

import enum
import hmac
import os
import secrets
from pathlib import Path

import msgspec
from msgspec import Struct


class Role(enum.Enum):
    WRITE = "write"
    ADMIN = "admin"


class Keys(Struct, frozen=True):
    write_key: str
    secret_key: str

    def role_of(self, presented: str | None) -> Role | None:
        """The role a presented key grants, compared in constant time; None if none."""
        if not presented:
            return None
        candidate = presented.encode()
        if hmac.compare_digest(candidate, self.secret_key.encode()):
            return Role.ADMIN
        if hmac.compare_digest(candidate, self.write_key.encode()):
            return Role.WRITE
        return None


class KeysResult(Struct, frozen=True):
    keys: Keys
    created: bool


def load_or_create_keys(
    data_dir: Path, write_key: str | None = None, secret_key: str | None = None
) -> KeysResult:
    """The keys to use: given ones win, else the stored ones, else new ones (stored)."""
    path = data_dir / "keys.json"
    stored: Keys | None = None
    created = False
    if path.exists():
        stored = msgspec.json.decode(path.read_bytes(), type=Keys)
    elif write_key is None or secret_key is None:
        stored = Keys(
            write_key="wk_" + secrets.token_urlsafe(24),
            secret_key="sk_" + secrets.token_urlsafe(32),
        )
        data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(msgspec.json.format(msgspec.json.encode(stored)))
        created = True
    keys = Keys(
        write_key=write_key or (stored.write_key if stored else ""),
        secret_key=secret_key or (stored.secret_key if stored else ""),
    )
    if keys.write_key == keys.secret_key:
        raise ValueError("the write key and the secret key must differ")
    return KeysResult(keys, created)
