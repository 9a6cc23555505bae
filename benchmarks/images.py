"""The real images the suites send: 600x450 HAM10000 originals and a generated 12 MP photo."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "images"
SHARED = REPO.parent / "shared" / "data"
FULLRES = SHARED / "fullres"
HAM_IMAGES = SHARED / "ham10000" / "images"
SPLIT_CSV = REPO / "training" / "split.csv"


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    data: bytes


def upload_images(limit: int | None = None) -> tuple[list[Sample], str]:
    """600x450 JPEGs as a client would upload them: ../shared/data/fullres, else the fixtures.

    Returns the samples and the folder they came from (recorded in the results).
    """
    folder = FULLRES if any(FULLRES.glob("*.jpg")) else FIXTURES
    paths = sorted(folder.glob("*.jpg"))[:limit]
    if not paths:
        raise FileNotFoundError(f"no JPEGs in {FULLRES} or {FIXTURES}")
    return [Sample(p.name, p.read_bytes()) for p in paths], str(_rel(folder))


def _rel(path: Path) -> Path:
    try:
        return path.resolve().relative_to(REPO.parent)
    except ValueError:
        return path


def phone_photo(source: bytes, megapixels: float = 12.0, quality: int = 92) -> Sample:
    """A phone-sized JPEG (4:3, ~12 MP) upscaled from a real lesion image, made in memory."""
    rgb = cv2.imdecode(np.frombuffer(source, np.uint8), cv2.IMREAD_COLOR)
    if rgb is None:
        raise ValueError("the source image for the phone photo does not decode")
    width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = width * 3 // 4
    big = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)
    # Sensor-like noise, so the JPEG is as dense as a phone's (~3 MB), not a smooth upscale.
    rng = np.random.default_rng(0)
    noise = np.asarray(rng.normal(0.0, 6.0, big.shape)).astype(np.int16)
    noisy = np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("could not encode the generated phone photo")
    return Sample(f"generated-{width}x{height}.jpg", encoded.tobytes())


@dataclass(frozen=True, slots=True)
class LabelledSet:
    images_dir: Path
    labels_csv: Path
    description: str


def test_split(quick: bool) -> LabelledSet:
    """The held-out test split (training/split.csv, part == test) or, quick, the fixtures."""
    if not quick and SPLIT_CSV.is_file() and HAM_IMAGES.is_dir():
        return LabelledSet(HAM_IMAGES, SPLIT_CSV, "HAM10000 test split (training/split.csv)")
    if not quick:
        log.warning("no test split images at %s; evaluating on the fixtures", HAM_IMAGES)
    return LabelledSet(FIXTURES, FIXTURES / "labels.csv", "tests/fixtures/images (14 images)")


def count_rows(labels_csv: Path, part: str | None = "test") -> int:
    with labels_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if part and rows and "split" in rows[0]:
        return sum(1 for r in rows if r["split"] == part)
    return len(rows)
