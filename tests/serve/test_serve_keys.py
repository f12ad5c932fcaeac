"""API keys: shown once, stored as salted hashes, verified, revoked; the `keys` commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from breastscreen.cli import app
from breastscreen.errors import BreastscreenError
from breastscreen.serve.keys import add_key, list_keys, revoke_key, verify_key
from breastscreen.serve.store import DB_NAME, JobStore


def test_key_is_stored_only_as_a_salted_hash(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    key = add_key(store, "alice")
    secret = key.split("_", 2)[2]
    assert len(secret) >= 40
    raw = b"".join(p.read_bytes() for p in tmp_path.glob(DB_NAME + "*"))
    assert secret.encode() not in raw and key.encode() not in raw
    info = verify_key(store, key)
    assert info is not None and info.name == "alice"
    with store.connect() as con:
        salts = {bytes(r[0]) for r in con.execute("SELECT salt FROM api_keys")}
    add_key(store, "bob")
    with store.connect() as con:
        assert len({bytes(r[0]) for r in con.execute("SELECT salt FROM api_keys")} | salts) == 2


def test_wrong_malformed_and_revoked_keys_do_not_verify(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    key = add_key(store, "alice")
    prefix, key_id, secret = key.split("_", 2)
    wrong = f"{prefix}_{key_id}_{'A' * len(secret)}"
    assert verify_key(store, wrong) is None
    assert verify_key(store, "not-a-key") is None
    assert verify_key(store, "") is None
    revoke_key(store, "alice")
    assert verify_key(store, key) is None
    assert not list_keys(store)[0].active


def test_names_are_checked_and_unique_while_active(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    add_key(store, "alice")
    with pytest.raises(BreastscreenError, match="active key named 'alice'"):
        add_key(store, "alice")
    with pytest.raises(BreastscreenError, match="key name"):
        add_key(store, "bad name;")
    with pytest.raises(BreastscreenError, match="no active key named 'carol'"):
        revoke_key(store, "carol")
    revoke_key(store, "alice")
    assert verify_key(store, add_key(store, "alice")) is not None


def test_keys_commands_print_the_key_once_and_never_list_it(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    added = runner.invoke(app, ["keys", "add", "bar", "--data-dir", str(data)])
    assert added.exit_code == 0, added.output
    key = re.findall(r"bsk_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}", added.stdout)
    assert len(key) == 1 and added.stdout.strip().splitlines()[-1] == key[0]
    listed = runner.invoke(app, ["keys", "list", "--data-dir", str(data)])
    assert listed.exit_code == 0 and "bar" in listed.stdout and "active" in listed.stdout
    assert key[0] not in listed.stdout and key[0].split("_", 2)[2] not in listed.stdout
    revoked = runner.invoke(app, ["keys", "revoke", "bar", "--data-dir", str(data)])
    assert revoked.exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list", "--data-dir", str(data)]).stdout
    assert verify_key(JobStore(data), key[0]) is None
