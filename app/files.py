"""Files: atomic writes, the one helper every writer uses (the image store, the dev secrets, the
conversion's artefacts, the benchmark results), so a reader sees the old file or the whole new
one, never a part, and a failed write leaves nothing behind; and file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

SHARED_FILE_MODE = 0o666  # before the umask: what open() gives a new file


def temporary_name(target: Path) -> Path:
    """``.<name>.<8 hex>.tmp`` beside ``target``: hidden, and on the same file system, so the
    final rename is atomic (the image store recognises leftovers by this pattern)."""
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    target: Path, mode: int = SHARED_FILE_MODE, durable: bool = False, overwrite: bool = True
) -> Iterator[Path]:
    """Yield a new empty file beside ``target`` to write (by path, for writers such as
    ``onnx.save``); it becomes ``target`` in one step only when the block succeeds.

    Args:
        mode: permission bits the file is created with (the umask applies): ``0o600`` for
            secrets and encrypted images, which are then never readable by others, even briefly.
        durable: fsync the data before the rename (survives a power cut once this returns).
        overwrite: False links instead of renaming, so an existing ``target`` wins and
            ``FileExistsError`` is raised (several processes creating one file at once).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
    try:
        yield tmp
        if durable:
            _sync(tmp)
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # never replaces: FileExistsError when it is there
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(
    target: Path,
    data: bytes | str,
    mode: int = SHARED_FILE_MODE,
    durable: bool = False,
    overwrite: bool = True,
) -> None:
    """Write ``data`` (str as UTF-8) to ``target`` atomically; see ``atomic_path``."""
    raw = data.encode() if isinstance(data, str) else data
    with atomic_path(target, mode, durable, overwrite) as tmp:
        tmp.write_bytes(raw)


def file_sha256(path: Path) -> str:
    """The file's sha256 in hex (``hashlib.file_digest``: read in chunks, not whole)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
