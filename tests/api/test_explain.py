"""POST /api/v1/explain on the bundled model and its shipped CAM model (models/*_cam.onnx)."""

from __future__ import annotations

import base64
from typing import Any

import cv2
import numpy as np
from litestar import Litestar
from litestar.testing import TestClient


def _explain(client: TestClient[Litestar], image: bytes, **params: str) -> dict[str, Any]:
    r = client.post(
        "/api/v1/explain", files={"image": ("x.jpg", image, "image/jpeg")}, params=params
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_explain_returns_the_prediction_and_a_heat_map(
    client: TestClient[Litestar], lesion_jpeg: bytes
) -> None:
    body = _explain(client, lesion_jpeg)
    predicted = client.post(
        "/api/v1/predict", files={"image": ("x.jpg", lesion_jpeg, "image/jpeg")}
    ).json()
    assert body["prediction"]["probabilities"] == predicted["probabilities"]
    explanation = body["explanation"]
    assert explanation["label"] == predicted["label"]  # the top class by default
    assert "CAM" in explanation["method"] and "not an outline" in explanation["caveat"]
    assert "second opinion" in body["disclaimer"]
    rows, columns = explanation["grid"]
    assert rows >= 3 and columns >= 3  # the last feature map of a 160x120 input
    png = base64.b64decode(explanation["image_png_base64"])
    overlay = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (240, 320, 3)  # the model's 4:3 view, 320 wide


def test_explain_another_class_on_request(client: TestClient[Litestar], lesion_jpeg: bytes) -> None:
    top = _explain(client, lesion_jpeg)["explanation"]
    other = "vasc" if top["label"] != "vasc" else "nv"
    body = _explain(client, lesion_jpeg, label=other)
    assert body["explanation"]["label"] == other
    assert body["explanation"]["image_png_base64"] != top["image_png_base64"]
    r = client.post(
        "/api/v1/explain",
        files={"image": ("x.jpg", lesion_jpeg, "image/jpeg")},
        params={"label": "cancer"},
    )
    assert r.status_code == 400 and "label must be one of" in r.json()["detail"]


def test_explain_refuses_a_bad_image_like_predict(client: TestClient[Litestar]) -> None:
    files = {"image": ("x.jpg", b"not an image", "image/jpeg")}
    explained, predicted = (
        client.post(f"/api/v1/{p}", files=files) for p in ("explain", "predict")
    )
    assert explained.status_code == predicted.status_code == 415
    assert explained.json() == predicted.json()
