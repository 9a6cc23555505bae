"""Atomic writes: a failed step must never leave a partial artefact behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; artefacts are meant to be shared
        os.replace(tmp, target)  # same directory, so the rename is atomic
    finally:
        tmp.unlink(missing_ok=True)


def save_onnx(model: onnx.ModelProto, target: Path) -> None:
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
