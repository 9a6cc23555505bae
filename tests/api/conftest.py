"""Fixtures for the JSON API tests: the real bundled model, a running app, generated images."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.config import Settings, default_model_path
from app.main import create_app

GENERATED = Path(__file__).resolve().parents[1] / "fixtures" / "generated"


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The bundled model (models/manifest.json's preferred); APP_MODEL_PATH overrides it."""
    override = os.environ.get("APP_MODEL_PATH")
    path = Path(override) if override else default_model_path()
    if not path.is_file():
        pytest.skip(
            f"no bundled model at {path}: run the conversion (python -m conversion "
            "convert) or set APP_MODEL_PATH"
        )
    return path


@pytest.fixture(scope="session")
def api_settings(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        api_auth=False,
        model_path=model_path,
        providers="cpu",
        ort_threads=2,
        data_dir=tmp_path_factory.mktemp("data"),
        dev=True,
        batch_max=8,
        microbatch_max=8,
        microbatch_wait_ms=2.0,
        queue_max=64,
    )


@pytest.fixture(scope="session")
def app(api_settings: Settings) -> Litestar:
    return create_app(api_settings)


@pytest.fixture(scope="session")
def client(app: Litestar) -> Iterator[TestClient[Litestar]]:
    """One app with its lifespan running, shared by the module's tests (the model loads once)."""
    with TestClient(app=app) as client:
        yield client


@pytest.fixture(scope="session")
def generated() -> Path:
    return GENERATED


@pytest.fixture(scope="session")
def lesion_jpeg(fixture_images: list[tuple[Path, str]]) -> bytes:
    return fixture_images[0][0].read_bytes()
