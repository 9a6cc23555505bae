"""Load HAM10000 images through the serving preprocessing into cached uint8 arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.inference.field_of_view import fill_outside
from app.inference.preprocess import decode_image, resize_rgb
from app.inference.spec import HAM10000_LABELS

CACHE_DIR = Path(__file__).resolve().parent / "cache"
# HAM10000's copies are 200x150; the model spec records it so serving resamples through it.
SOURCE_SIZE = (200, 150)


def load_images(
    image_dir: Path,
    image_ids: list[str],
    size: tuple[int, int],
    desc: str = "images",
    via: tuple[int, int] | None = SOURCE_SIZE,
) -> np.ndarray:
    """Decode + resize exactly as the server does; returns uint8 (N, H, W, 3) RGB."""
    out = np.empty((len(image_ids), size[1], size[0], 3), np.uint8)
    for i, image_id in enumerate(tqdm(image_ids, desc=desc, unit="img")):
        data = (image_dir / f"{image_id}.jpg").read_bytes()
        out[i] = fill_outside(resize_rgb(decode_image(data, via or size), size, via))[0]
    return out


def part_labels(rows: list[dict[str, str]], part: str) -> np.ndarray:
    """The class indices of one part of the split, in the split file's order."""
    return np.array([HAM10000_LABELS.index(r["dx"]) for r in rows if r["split"] == part], np.int64)


def load_split_arrays(
    image_dir: Path,
    rows: list[dict[str, str]],
    part: str,
    size: tuple[int, int],
    cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8, labels int) for one part of the split, cached per size."""
    chosen = [r for r in rows if r["split"] == part]
    ids = [r["image_id"] for r in chosen]
    labels = part_labels(rows, part)
    # "fov": round fields of view filled (app.inference.field_of_view), as the server does
    path = CACHE_DIR / f"{part}-{size[0]}x{size[1]}-{len(ids)}-fov.npy"
    if cache and path.is_file():
        return np.load(path), labels
    images = load_images(image_dir, ids, size, desc=f"{part} {size[0]}x{size[1]}")
    if cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        np.save(path, images)
    return images, labels
