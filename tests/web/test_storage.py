"""Encrypted storage: AES-GCM, bound to the file name, write-then-rename."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.config import ConfigError
from app.storage import EncryptedStore, StorageError, parse_key


def test_storage_roundtrip_and_tamper(tmp_path: Path) -> None:
    store = EncryptedStore(tmp_path, os.urandom(32))
    name = store.put(b"\xff\xd8\xff secret pixels", ".jpeg")
    assert name.endswith(".jpeg") and len(name) == 32 + 5
    assert b"secret" not in (tmp_path / name).read_bytes()
    assert store.get(name) == b"\xff\xd8\xff secret pixels"
    other = store.put(b"other", ".jpeg")
    (tmp_path / other).write_bytes((tmp_path / name).read_bytes())  # swapped file
    with pytest.raises(StorageError):
        store.get(other)
    with pytest.raises(StorageError):
        EncryptedStore(tmp_path, os.urandom(32)).get(name)  # wrong key
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, other])


def test_storage_rejects_path_names(tmp_path: Path) -> None:
    from app.errors import NotFoundError

    store = EncryptedStore(tmp_path, os.urandom(32))
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(NotFoundError):
            store.get(bad)


def test_storage_key_formats() -> None:
    raw = os.urandom(32)
    import base64

    assert parse_key(base64.urlsafe_b64encode(raw).decode()) == raw
    assert parse_key(raw.hex()) == raw
    with pytest.raises(ConfigError):
        parse_key("too-short")
