"""Fixtures shared by the conversion tests."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest


@pytest.fixture
def split_csv(tmp_path: Path, fixture_images: list[tuple[Path, str]]) -> Path:
    """The committed fixtures split train/val/test in turn, as training/split.csv would be."""
    path = tmp_path / "split.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "dx", "split"])
        for i, (p, dx) in enumerate(fixture_images):
            w.writerow([p.stem, dx, ("train", "val", "test")[i % 3]])
    return path
