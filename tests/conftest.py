"""Shared test fixtures: paths to committed images and models. Tests never read ../shared."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = FIXTURES.parent.parent


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_images() -> list[tuple[Path, str]]:
    """(path, dx) of the committed 600x450 HAM10000 originals, two per class."""
    with (FIXTURES / "images" / "labels.csv").open(newline="") as fh:
        return [(FIXTURES / "images" / f"{r['image_id']}.jpg", r["dx"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="session")
def upstream_h5() -> Path:
    """The upstream app's 28x28 Keras model (MIT licence)."""
    return FIXTURES / "upstream_skin.h5"
