"""Fixtures for the red-team findings (issue 16): a real server process and hostile files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hardening.server import Server, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for a test module (the bundled model, SQLite, dev mode, no API auth)."""
    with running_server(tmp_path_factory.mktemp("server") / "data") as server:
        yield server
