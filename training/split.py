"""Leak-free, deterministic train/val/test split of HAM10000 by lesion."""

from __future__ import annotations

import csv
from pathlib import Path

from sklearn.model_selection import train_test_split

SPLIT_CSV = Path(__file__).resolve().parent / "split.csv"
PARTS = ("train", "val", "test")


def make_split(metadata_csv: Path, seed: int = 20261126) -> list[dict[str, str]]:
    """Assign every image to train/val/test (~70/15/15 of lesions), stratified by class.

    All images of one lesion share a part, so no lesion leaks across parts.
    """
    with metadata_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    lesion_dx: dict[str, str] = {}
    for row in rows:
        lesion_dx.setdefault(row["lesion_id"], row["dx"])
    lesions = sorted(lesion_dx)
    labels = [lesion_dx[lesion] for lesion in lesions]
    train, rest, _, rest_labels = train_test_split(
        lesions, labels, test_size=0.30, stratify=labels, random_state=seed
    )
    val, test = train_test_split(rest, test_size=0.50, stratify=rest_labels, random_state=seed)
    part_of = {
        lesion: part
        for part, group in zip(PARTS, (train, val, test), strict=False)
        for lesion in group
    }
    return [
        {
            "image_id": r["image_id"],
            "lesion_id": r["lesion_id"],
            "dx": r["dx"],
            "split": part_of[r["lesion_id"]],
        }
        for r in sorted(rows, key=lambda r: r["image_id"])
    ]


def write_split(rows: list[dict[str, str]], path: Path = SPLIT_CSV) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image_id", "lesion_id", "dx", "split"])
        writer.writeheader()
        writer.writerows(rows)


def read_split(path: Path = SPLIT_CSV) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
