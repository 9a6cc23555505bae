"""Labelled real images through the serving ``preprocess``: checks see what serving sees."""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.inference.preprocess import preprocess
from app.inference.spec import ModelSpec
from conversion.errors import ConversionError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "ham10000" / "images"
DEFAULT_SPLIT = REPO / "training" / "split.csv"


@dataclass(frozen=True, slots=True)
class Sample:
    path: Path
    dx: str


def _rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise ConversionError(f"{csv_path}: no such file")
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"image_id", "dx"} <= rows[0].keys():
        raise ConversionError(f"{csv_path}: needs the columns image_id and dx")
    return rows


def read_labels(labels_csv: Path, images_dir: Path, part: str | None = None) -> list[Sample]:
    """Rows of a CSV with ``image_id,dx`` (and optionally ``split``, ``file``) as samples.

    Args:
        part: keep only rows whose ``split`` column equals it (train/val/test).
    """
    rows = _rows(labels_csv)
    if part is not None:
        if rows and "split" not in rows[0]:
            raise ConversionError(f"{labels_csv}: no split column to select {part!r} from")
        rows = [r for r in rows if r["split"] == part]
    samples = [
        Sample(images_dir / (r.get("file") or f"{r['image_id']}.jpg"), r["dx"]) for r in rows
    ]
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        raise ConversionError(f"{len(missing)} images missing, e.g. {missing[0]}")
    if not samples:
        raise ConversionError(f"{labels_csv}: no images selected (part={part!r})")
    return samples


def balanced_subset(samples: list[Sample], count: int, seed: int = 0) -> list[Sample]:
    """Up to ``count`` samples spread evenly over classes, so rare lesions shape INT8 ranges too."""
    if count >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.dx, []).append(s)
    pools = {dx: [items[i] for i in rng.permutation(len(items))] for dx, items in by_class.items()}
    chosen: list[Sample] = []
    while len(chosen) < count:  # round-robin over classes until the budget is spent
        for dx in sorted(pools):
            if pools[dx] and len(chosen) < count:
                chosen.append(pools[dx].pop())
    return chosen


def preprocess_paths(paths: list[Path], spec: ModelSpec, desc: str = "preprocess") -> np.ndarray:
    """Stack ``preprocess(bytes, spec)`` of every image into one float32 batch."""
    arrays = [
        preprocess(p.read_bytes(), spec)
        for p in tqdm(paths, desc=desc, unit="img", leave=False, disable=len(paths) < 200)
    ]
    return np.stack(arrays).astype(np.float32, copy=False)


def nhwc(spec: ModelSpec) -> ModelSpec:
    """The same contract in Keras's layout, for feeding the source model."""
    return dataclasses.replace(spec, layout="NHWC")
