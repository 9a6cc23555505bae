"""Fixtures for the fleet tests: real nginx, a PostgreSQL of their own, real replicas."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.cluster import missing_tools


@pytest.fixture
def fleet_tools() -> None:
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs the Debian package(s) {', '.join(missing)} (.ci/run installs them)")


@pytest.fixture(scope="session")
def fleet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model (fast on 2 shared cores), with its CAM model and quality gate."""
    from tests.web.conftest import build_tiny_cam_model, build_tiny_model, write_quality_gate

    directory = tmp_path_factory.mktemp("fleet-model")
    os.chmod(directory, 0o755)
    model = build_tiny_model(directory / "tiny.onnx")
    build_tiny_cam_model(model)
    write_quality_gate(model)
    return model


@pytest.fixture
def pg_root() -> Iterator[Path]:
    """A directory PostgreSQL's own user can reach (pytest's tmp dirs are root-only 0700)."""
    root = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
    os.chmod(root, 0o755)
    try:
        yield root / "cluster"
    finally:
        shutil.rmtree(root, ignore_errors=True)
