"""API keys of the service: made here, shown once, stored only as salted hashes.

A key looks like ``bsk_<key id>_<secret>``: the key id (8 hex characters) finds the stored row
without scanning, the secret (43 URL-safe characters, 256 random bits) is checked against
``sha256(salt || secret)`` with a constant-time comparison. A fast salted hash is enough here
because the secret is random and long (nothing to brute-force from a dictionary); the salt makes
equal secrets hash differently. Keys are revoked, never deleted, so the audit trail keeps names.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass

from breastscreen.errors import BreastscreenError
from breastscreen.serve.store import JobStore

KEY_PREFIX = "bsk"
_KEY_RE = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{8}})_([A-Za-z0-9_-]{{20,128}})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class KeyInfo:
    """A stored key, without its secret."""

    key_id: str
    name: str
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        """True until the key is revoked."""
        return self.revoked_at is None


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("utf-8")).digest()


def add_key(store: JobStore, name: str) -> str:
    """Create a key called ``name`` and return it (the only time the full key exists in clear)."""
    if not _NAME_RE.match(name):
        raise BreastscreenError(
            f"key name must be 1-64 letters, digits, '_', '.', '@' or '-' (starting with a letter or digit), got {name!r}"
        )
    secret = secrets.token_urlsafe(32)
    salt = os.urandom(16)
    with store.transaction() as con:
        if con.execute("SELECT 1 FROM api_keys WHERE name=? AND revoked_at IS NULL", (name,)).fetchone():
            raise BreastscreenError(f"an active key named {name!r} exists; revoke it first or choose another name")
        while True:
            key_id = secrets.token_hex(4)
            if not con.execute("SELECT 1 FROM api_keys WHERE key_id=?", (key_id,)).fetchone():
                break
        con.execute("INSERT INTO api_keys (key_id, name, salt, hash, created_at) VALUES (?, ?, ?, ?, ?)",
                    (key_id, name, salt, _digest(salt, secret), time.time()))
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def list_keys(store: JobStore) -> list[KeyInfo]:
    """Every key, active and revoked, oldest first."""
    with store.connect() as con:
        rows = con.execute("SELECT key_id, name, created_at, revoked_at FROM api_keys ORDER BY created_at").fetchall()
    return [KeyInfo(r["key_id"], r["name"], r["created_at"], r["revoked_at"]) for r in rows]


def revoke_key(store: JobStore, name: str) -> int:
    """Revoke the active key called ``name``; returns how many were revoked (raises when none)."""
    with store.transaction() as con:
        cur = con.execute("UPDATE api_keys SET revoked_at=? WHERE name=? AND revoked_at IS NULL", (time.time(), name))
        n = cur.rowcount
    if n == 0:
        raise BreastscreenError(f"no active key named {name!r} (see `breastscreen keys list`)")
    return n


def verify_key(store: JobStore, key: str) -> KeyInfo | None:
    """The active key that ``key`` is, or None (wrong format, unknown, revoked or wrong secret)."""
    m = _KEY_RE.match(key.strip())
    if not m:
        return None
    key_id, secret = m.groups()
    with store.connect() as con:
        row = con.execute("SELECT key_id, name, salt, hash, created_at, revoked_at FROM api_keys WHERE key_id=?",
                          (key_id,)).fetchone()
    if row is None or row["revoked_at"] is not None:
        return None
    if not hmac.compare_digest(bytes(row["hash"]), _digest(bytes(row["salt"]), secret)):
        return None
    return KeyInfo(row["key_id"], row["name"], row["created_at"], row["revoked_at"])
