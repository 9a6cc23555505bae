"""Atomic writes of the conversion's artefacts: a failed step must never leave a partial one
behind. The one helper is ``app.files``; this adds the ONNX writer."""

from __future__ import annotations

from pathlib import Path

import onnx

from app.files import atomic_path as atomic_path
from app.files import atomic_write


def save_onnx(model: onnx.ModelProto, target: Path) -> None:
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))


def write_text(target: Path, text: str) -> None:
    atomic_write(target, text)
