"""A split of the committed fixture images for training smoke tests."""

from __future__ import annotations

import csv
from pathlib import Path

SIZE = (64, 48)  # the smallest MobileNetV2 input with a stride-16 grid of more than one cell


def alternating_split(folder: Path, images: Path) -> Path:
    """A split CSV in ``folder``: the fixtures alternately train and val, so each part holds one
    image of each class."""
    with (images / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    split = folder / "split.csv"
    with split.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image_id", "lesion_id", "dx", "split"])
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({**row, "split": "train" if i % 2 == 0 else "val"})
    return split
