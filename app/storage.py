"""Encrypted file storage: AES-256-GCM at rest, random names, write-then-rename.

File layout: ``MAGIC | 12-byte nonce | ciphertext+tag``; the file name is the associated data,
so a file copied over another record's name fails to decrypt instead of showing the wrong image.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.errors import ConfigError, NotFoundError
from app.files import atomic_write

log = logging.getLogger(__name__)

MAGIC = b"SLE1"
NONCE_BYTES = 12
# Patient images and reports: readable by the service's user only, whatever the umask.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path, tighten: bool = False) -> None:
    """Create ``path`` and its missing parents as 0700 (``Path.mkdir(mode=...)`` sets the last
    level only, through the umask). ``tighten``: also chmod an existing ``path`` to 0700, for a
    directory that is ours alone, never a configured one that may be shared (``/tmp``).
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for level in reversed(missing):
        level.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        os.chmod(level, PRIVATE_DIR_MODE)
    if tighten and path.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
        try:
            os.chmod(path, PRIVATE_DIR_MODE)
        except PermissionError:  # someone else's directory: leave it, say so
            log.warning("cannot make %s private (0700): not its owner", path)


def private_file(path: Path) -> None:
    """Create ``path`` empty as 0600 if it is missing; tighten it if it exists with more."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)


class StorageError(RuntimeError):
    """A stored file is corrupt, tampered with or encrypted with another key."""


SEALED_PREFIX = "s1:"


def _derive_key(key: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(key)


def parse_key(raw: str) -> bytes:
    """APP_STORAGE_KEY: 32 bytes as url-safe base64 (what dev mode generates) or 64 hex digits."""
    raw = raw.strip()
    key: bytes | None = None
    try:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        key = None
    if key is None or len(key) != 32:
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            key = None
    if key is None or len(key) != 32:
        raise ConfigError("APP_STORAGE_KEY must be 32 bytes as url-safe base64 or 64 hex digits")
    return key


class EncryptedStore:
    """Stores blobs under ``root`` with random names; names never come from user input."""

    def __init__(self, root: Path, key: bytes) -> None:
        self.root = root
        self._aead = AESGCM(key)
        self._private = False
        # Record fields (patient identifier, file name) are sealed with keys derived from the
        # same storage key: one secret to keep, separate keys for separate uses.
        self._fields = AESGCM(_derive_key(key, b"record fields"))
        self._index_key = _derive_key(key, b"blind index")

    def seal_text(self, text: str) -> str:
        """``text`` encrypted for a database column (AES-GCM, ``s1:`` + base64)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._fields.encrypt(nonce, text.encode(), b"field")
        return SEALED_PREFIX + base64.urlsafe_b64encode(sealed).decode()

    def open_text(self, value: str) -> str:
        """The text of a sealed column; a value written before sealing is returned as it is."""
        if not value.startswith(SEALED_PREFIX):
            return value
        raw = base64.urlsafe_b64decode(value[len(SEALED_PREFIX) :])
        try:
            return self._fields.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], b"field").decode()
        except InvalidTag as exc:
            raise StorageError("a sealed field failed authentication (wrong key?)") from exc

    def blind_index(self, text: str) -> str:
        """A keyed hash of ``text`` for exact-match search: equal names (ignoring case and
        spacing) match, and the column reveals nothing without the key."""
        normal = " ".join(text.casefold().split())
        return hmac.new(self._index_key, normal.encode(), hashlib.sha256).hexdigest()

    def _path(self, name: str) -> Path:
        # Names are ours (token_hex + suffix), but refuse anything path-like all the same.
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise NotFoundError("file not found")
        return self.root / name

    # Where the encrypted bytes live: "filesystem" (files under ``root``) or "database"
    # (app/db/blobs.py). Callers use the async methods below, which both backends implement.
    backend = "filesystem"
    # Whether a blob written or removed inside a database transaction is part of it (so an
    # analysis row and its image commit or roll back together).
    transactional = False

    @staticmethod
    def new_name(suffix: str) -> str:
        return secrets.token_hex(16) + suffix

    def seal_blob(self, name: str, data: bytes) -> bytes:
        """``data`` encrypted as stored: ``MAGIC | nonce | AES-GCM(data, ad=name)``."""
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, name.encode())

    def open_blob(self, name: str, blob: bytes) -> bytes:
        """The plain bytes of a stored blob; StorageError when it is not ours or was altered."""
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
            raise StorageError(f"{name} is not an encrypted blob")
        nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], name.encode())
        except InvalidTag as exc:
            raise StorageError(f"{name} failed authentication (tampered or wrong key)") from exc

    # The one interface both backends implement (the filesystem's runs off the event loop).
    async def write(self, data: bytes, suffix: str = ".bin") -> str:
        """Encrypt and store ``data``; returns its new random name."""
        return await asyncio.to_thread(self.put, data, suffix)

    async def read(self, name: str) -> bytes:
        """The decrypted bytes; NotFoundError when absent, StorageError when altered."""
        return await asyncio.to_thread(self.get, name)

    async def has(self, name: str | None) -> bool:
        return await asyncio.to_thread(self.exists, name)

    async def remove(self, name: str | None) -> None:
        """Remove a blob (nothing when absent); OSError when the disk refuses."""
        await asyncio.to_thread(self.delete, name)

    def put(self, data: bytes, suffix: str = ".bin") -> str:
        """Encrypt and store ``data``; returns the new random name. Durable once it returns."""
        # images/ is the store's own, so an existing 0755 one is tightened (once) too.
        private_dir(self.root, tighten=not self._private)
        self._private = True
        name = self.new_name(suffix)
        blob = self.seal_blob(name, data)
        # Atomic and durable: readers see nothing or the whole file, and it survives a crash.
        atomic_write(self._path(name), blob, PRIVATE_FILE_MODE, durable=True)
        return name

    def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            blob = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError("file not found") from exc
        return self.open_blob(name, blob)

    def exists(self, name: str | None) -> bool:
        return bool(name) and self._path(name).is_file()  # type: ignore[arg-type]

    def delete(self, name: str | None) -> None:
        if name:
            self._path(name).unlink(missing_ok=True)


# Names the store writes: blobs ``<32 hex>.<suffix>`` and, while writing, ``.<blob>.<8 hex>.tmp``.
_BLOB_NAME = re.compile(r"[0-9a-f]{32}\.[a-z0-9]{1,8}")
_TMP_NAME = re.compile(r"\.([0-9a-f]{32}\.[a-z0-9]{1,8})\.[0-9a-f]{8}\.tmp")
# Only files older than this are removed: a younger one may be an upload whose row is being
# inserted right now by this or another worker process.
ORPHAN_MIN_AGE_S = 3600.0


@dataclass
class StorageCheck:
    """Files with no row (orphans), unfinished writes, and rows whose image file is missing."""

    orphans: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)  # (analysis id, file name)
    too_young: list[str] = field(default_factory=list)  # orphans kept: may be mid-upload
    removed: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing left to act on (young files are not counted: they may yet get a row)."""
        leftover = set(self.orphans) | set(self.temporaries)
        return not self.missing and leftover <= set(self.removed)

    def summary(self) -> str:
        return (
            f"{len(self.orphans)} orphan file(s), {len(self.temporaries)} unfinished write(s), "
            f"{len(self.missing)} analysis row(s) missing their image, "
            f"{len(self.removed)} file(s) removed, {len(self.too_young)} too recent to judge"
        )


def scan_store(
    root: Path,
    referenced: set[str],
    rows: dict[str, str],
    repair: bool,
    min_age_s: float = ORPHAN_MIN_AGE_S,
) -> StorageCheck:
    """Compare the files under ``root`` with the names the database refers to.

    Args:
        referenced: every file name a row refers to (images and PDF reports).
        rows: analysis id -> its image file name, to report rows whose image is missing.
        repair: remove orphans and unfinished writes older than ``min_age_s`` seconds.
    """
    check = StorageCheck()
    now = time.time()
    present = set()
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        name = entry.name
        if not entry.is_file():
            continue
        if _BLOB_NAME.fullmatch(name):
            present.add(name)
            if name in referenced:
                continue
            check.orphans.append(name)
        elif _TMP_NAME.fullmatch(name):
            check.temporaries.append(name)
        else:
            continue  # not ours: never touched
        if now - entry.stat().st_mtime < min_age_s:
            check.too_young.append(name)
        elif repair:
            entry.unlink(missing_ok=True)
            check.removed.append(name)
    check.missing = sorted((i, n) for i, n in rows.items() if n not in present)
    return check


async def check_storage(
    root: Path, repair: bool, min_age_s: float = ORPHAN_MIN_AGE_S
) -> StorageCheck:
    """Scan the store at ``root`` against the database the tables are bound to
    (``app.db.engine.bind``): at start-up, and by ``python -m app storage check``."""
    from app.db.tables import Analysis

    rows = await Analysis.select(Analysis.id, Analysis.image_path, Analysis.report_path).run()
    referenced = {r["image_path"] for r in rows} | {
        r["report_path"] for r in rows if r["report_path"]
    }
    images = {str(r["id"]): r["image_path"] for r in rows}
    return await asyncio.to_thread(scan_store, root, referenced, images, repair, min_age_s)
