"""Each API controller carries the body limit its settings give it: one image, or a batch of up
to four maximal images, over the app's own limit (one upload)."""

from __future__ import annotations

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.testing import TestClient

from app.config import Settings

OVERHEAD = 64 * 1024


def _limit(app: Litestar, path: str) -> int | None:
    for route in app.routes:
        if route.path == path:
            for handler in route.route_handlers:  # type: ignore[union-attr]
                if isinstance(handler, HTTPRouteHandler):
                    return handler.resolve_request_max_body_size()
    raise AssertionError(f"no route {path}")


def test_each_controller_has_its_body_limit(app: Litestar, api_settings: Settings) -> None:
    one = api_settings.max_upload_bytes
    assert _limit(app, "/api/v1/predict") == one + OVERHEAD
    assert _limit(app, "/api/v1/explain") == one + OVERHEAD
    assert _limit(app, "/api/v1/predict/batch") == 4 * one + OVERHEAD


def test_a_batch_may_exceed_one_upload_but_not_four(
    client: TestClient[Litestar], api_settings: Settings, lesion_jpeg: bytes
) -> None:
    one = api_settings.max_upload_bytes
    part = lesion_jpeg + b"\0" * (one // 2)  # each image within the limit, two over one upload
    r = client.post(
        "/api/v1/predict/batch",
        files=[("images", (f"{i}.jpg", part, "image/jpeg")) for i in range(3)],
    )
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 3
    # Eight (within APP_BATCH_MAX here) of half the limit each: over four uploads' worth.
    r = client.post(
        "/api/v1/predict/batch",
        files=[("images", (f"{i}.jpg", part, "image/jpeg")) for i in range(8)],
    )
    assert r.status_code == 413, r.text
