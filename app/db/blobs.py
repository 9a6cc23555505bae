"""``APP_STORAGE=database``: the encrypted images and reports in the ``stored_blob`` table.

The bytes are exactly those the file store writes (``MAGIC | nonce | AES-GCM``, the blob's
name as associated data), so ``python -m app storage migrate --to database`` copies files in
without re-encrypting, and a blob moved under another name fails to decrypt. Writes and
deletes run on the caller's transaction when there is one: an analysis row and its image
commit, or roll back, together.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.db.tables import Analysis, StoredBlob
from app.errors import NotFoundError
from app.storage import ORPHAN_MIN_AGE_S, EncryptedStore, StorageError

log = logging.getLogger(__name__)


class DatabaseStore(EncryptedStore):
    """The encrypted store with its bytes in the database the tables are bound to.

    ``root`` is kept only for ``storage migrate`` (the files it copies from); nothing here
    writes files. Sealed record fields (patient, file name) work exactly as in the file store.
    """

    backend = "database"
    transactional = True

    async def write(self, data: bytes, suffix: str = ".bin") -> str:
        name = self.new_name(suffix)
        blob = await asyncio.to_thread(self.seal_blob, name, data)
        await self.insert_sealed(name, blob)
        return name

    async def insert_sealed(self, name: str, blob: bytes) -> None:
        """Store bytes that are already sealed under ``name`` (a migrated file)."""
        self._path(name)  # the same name rules as the file store
        await StoredBlob.insert(
            StoredBlob(
                name=name, data=blob, sha256=hashlib.sha256(blob).hexdigest(), size=len(blob)
            )
        ).run()

    async def read(self, name: str) -> bytes:
        self._path(name)
        row = (
            await StoredBlob.select(StoredBlob.data, StoredBlob.sha256, StoredBlob.size)
            .where(StoredBlob.name == name)
            .first()
            .run()
        )
        if row is None:
            raise NotFoundError("file not found")
        blob = bytes(row["data"])
        if len(blob) != row["size"] or hashlib.sha256(blob).hexdigest() != row["sha256"]:
            raise StorageError(f"{name}: stored bytes do not match their recorded hash and size")
        return await asyncio.to_thread(self.open_blob, name, blob)

    async def has(self, name: str | None) -> bool:
        if not name:
            return False
        return bool(await StoredBlob.exists().where(StoredBlob.name == name).run())

    async def remove(self, name: str | None) -> None:
        if name:
            await StoredBlob.delete().where(StoredBlob.name == name).run()

    # The file store's blocking methods would silently touch files this backend never reads.
    def put(self, data: bytes, suffix: str = ".bin") -> str:
        raise TypeError("DatabaseStore: use `await store.write(...)`")

    def get(self, name: str) -> bytes:
        raise TypeError("DatabaseStore: use `await store.read(...)`")

    def exists(self, name: str | None) -> bool:
        raise TypeError("DatabaseStore: use `await store.has(...)`")

    def delete(self, name: str | None) -> None:
        raise TypeError("DatabaseStore: use `await store.remove(...)`")


def make_store(backend: str, root: Path, key: bytes) -> EncryptedStore:
    """The store ``APP_STORAGE`` names."""
    if backend == "database":
        return DatabaseStore(root, key)
    return EncryptedStore(root, key)


@dataclass
class MoveReport:
    """What ``storage migrate --to database`` did; run it again and ``copied`` is 0."""

    copied: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    missing_images: list[tuple[str, str]] = field(default_factory=list)  # (analysis, name)
    missing_reports: list[str] = field(default_factory=list)  # rebuilt on demand: no loss
    bytes_copied: int = 0

    @property
    def complete(self) -> bool:
        return not self.missing_images

    def summary(self) -> str:
        return (
            f"{len(self.copied)} blob(s) copied ({self.bytes_copied} bytes), "
            f"{len(self.already)} already in the database, "
            f"{len(self.missing_images)} image(s) missing, "
            f"{len(self.missing_reports)} report(s) missing (rebuilt on demand)"
        )


async def migrate_to_database(store: DatabaseStore) -> MoveReport:
    """Copy every image and report that a row refers to from ``store.root`` into the table.

    Idempotent and safe to interrupt: a blob already in the table is left (after checking it is
    the same bytes), each copy is one insert, and no file is deleted (remove the directory
    yourself once a backup of the database holds the images). Each file is decrypted before it
    is copied, so a wrong APP_STORAGE_KEY or a damaged file stops the move with a StorageError
    instead of filling the table with unreadable bytes.
    """
    moved = MoveReport()
    rows = await Analysis.select(Analysis.id, Analysis.image_path, Analysis.report_path).run()
    wanted: list[tuple[str, str, bool]] = []
    for row in rows:
        wanted.append((str(row["id"]), row["image_path"], True))
        if row["report_path"]:
            wanted.append((str(row["id"]), row["report_path"], False))
    for analysis_id, name, is_image in wanted:
        path = store._path(name)
        try:
            blob = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            blob = None
        present = (
            await StoredBlob.select(StoredBlob.sha256).where(StoredBlob.name == name).first().run()
        )
        if present is not None:
            if blob is not None and hashlib.sha256(blob).hexdigest() != present["sha256"]:
                raise StorageError(f"{name}: the file differs from the copy already in the table")
            moved.already.append(name)
            continue
        if blob is None:
            if is_image:
                moved.missing_images.append((analysis_id, name))
            else:
                moved.missing_reports.append(name)
            continue
        await asyncio.to_thread(store.open_blob, name, blob)  # our key, intact: else it stops
        await store.insert_sealed(name, blob)
        moved.copied.append(name)
        moved.bytes_copied += len(blob)
    return moved


async def check_database_store(repair: bool, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[str]:
    """Problems of the database store, one line each: blobs no row refers to (left by a crash
    between a report's write and its claim; removed with ``repair`` once older than
    ``min_age_s``) and analyses whose image blob is missing."""
    rows = await Analysis.select(Analysis.id, Analysis.image_path, Analysis.report_path).run()
    referenced = {r["image_path"] for r in rows} | {
        r["report_path"] for r in rows if r["report_path"]
    }
    blobs = await StoredBlob.select(StoredBlob.name, StoredBlob.created_at).run()
    present = {b["name"] for b in blobs}
    problems: list[str] = []
    now = time.time()
    for blob in blobs:
        if blob["name"] in referenced:
            continue
        created = blob["created_at"]
        if isinstance(created, str):  # SQLite hands timestamps back as text
            created = dt.datetime.fromisoformat(created)
        if created.tzinfo is None:
            created = created.replace(tzinfo=dt.UTC)
        age = now - created.timestamp()
        if repair and age >= min_age_s:
            await StoredBlob.delete().where(StoredBlob.name == blob["name"]).run()
            problems.append(f"orphan blob {blob['name']} (removed)")
        else:
            problems.append(f"orphan blob {blob['name']} (kept)")
    for row in rows:
        if row["image_path"] not in present:
            problems.append(f"analysis {row['id']}: image {row['image_path']} is missing")
    return problems
