"""The explanation's numbers through the API, on the bundled model's Layer-CAM maps."""

from __future__ import annotations

import json
from pathlib import Path

from litestar import Litestar
from litestar.testing import TestClient


def test_explain_returns_the_map_and_the_view(
    client: TestClient[Litestar], fixture_images: list[tuple[Path, str]], model_path: Path
) -> None:
    manifest = json.loads((model_path.parent / "manifest.json").read_text())
    rows, cols = manifest["files"]["cam"]["shown"]["grid"]  # the stride-8 grid: 19x25
    path = fixture_images[0][0]
    r = client.post("/api/v1/explain", files={"image": (path.name, path.read_bytes())})
    assert r.status_code == 200, r.text
    explanation = r.json()["explanation"]
    heat = explanation["map"]
    assert (heat["rows"], heat["cols"]) == (rows, cols) and explanation["grid"] == [rows, cols]
    values = heat["values"]
    assert len(values) == rows and all(len(row) == cols for row in values)
    flat = [v for row in values for v in row]
    assert min(flat) >= 0 and max(flat) == 1.0  # scaled to a maximum of 1
    assert explanation["view"]["crop"] == [0, 0, 600, 450]  # 4:3 upload, 4:3 model: all of it
    assert "Layer-CAM" in explanation["method"]
