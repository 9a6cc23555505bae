"""The records API answers typed records: the public fields, nothing stored behind them."""

from __future__ import annotations

import re
from pathlib import Path

from litestar import Litestar
from litestar.testing import TestClient

from .conftest import csrf, register, upload


def test_records_are_typed_and_leak_nothing_internal(
    client: TestClient[Litestar], fixture_images: list[tuple[Path, str]]
) -> None:
    jpeg = fixture_images[0][0].read_bytes()
    register(client, "alice")
    upload(client, "Record Patient", [("scan.jpg", jpeg)])
    page = client.post("/tokens", data={"name": "station", "_csrf_token": csrf(client, "/tokens")})
    token = re.search(r'id="new-token"[^>]*>([^<]+)<', page.text)
    assert token
    headers = {"Authorization": f"Bearer {token.group(1)}"}
    (record,) = client.get("/api/v1/analyses", headers=headers).json()["analyses"]
    assert record["patient"] == "Record Patient" and record["original_filename"] == "scan.jpg"
    assert record["outside_intended_use"] is False
    assert "second opinion" in record["disclaimer"]
    for internal in ("image_path", "patient_sealed", "patient_index", "report_path", "owner"):
        assert internal not in record
    one = client.get(f"/api/v1/analyses/{record['id']}", headers=headers).json()
    assert one == record
