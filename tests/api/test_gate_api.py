"""The intended-use gate through the real server: predict, batch, explain, live, metrics, health."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.config import Settings
from app.inference.classifier import ModelLoadError
from app.main import create_app
from conversion.devset import _text_page, jpeg


@pytest.fixture(scope="module")
def document() -> bytes:
    """A rendered page of printed text, photographed slightly warm: what a kiosk might get."""
    page = _text_page(np.random.default_rng(3), 800, 600, (245, 240, 230))
    return jpeg(page)


def test_a_document_is_refused_with_reasons(client: TestClient[Litestar], document: bytes) -> None:
    r = client.post("/api/v1/predict", files={"image": ("page.jpg", document, "image/jpeg")})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "image_rejected"
    assert body["detail"].startswith("Not analysed:")
    checks = {reason["check"] for reason in body["reasons"]}
    assert "out_of_distribution" in checks
    for reason in body["reasons"]:
        assert set(reason) == {"check", "value", "threshold"}
        assert reason["value"] > reason["threshold"] or reason["check"] != "out_of_distribution"
    assert "label" not in body  # no class, no confidence: nothing to misread


def test_dermoscopic_images_pass_with_their_gate_record(
    client: TestClient[Litestar], fixture_images: list[tuple[Path, str]]
) -> None:
    refused = []
    for path, _ in fixture_images:
        r = client.post("/api/v1/predict", files={"image": (path.name, path.read_bytes())})
        if r.status_code == 422:
            refused.append(path.name)
            continue
        assert r.status_code == 200, (path.name, r.text)
        gate = r.json()["gate"]
        assert gate["passed"] is True and gate["reasons"] == []
        assert gate["distribution_checked"] is True
        assert gate["scores"]["out_of_distribution"] <= gate["thresholds"]["out_of_distribution"]
        assert set(gate["thresholds"]) >= {"too_small", "too_dark", "blurred"}
    # The acceptance bound on the 44 originals is 1; these 14 are among them, and the one
    # the shipped gate refuses there (ISIC_0025121, dark and unusual) is here too.
    assert len(refused) <= 1, refused


def test_batch_items_get_the_same_error_entry(
    client: TestClient[Litestar], document: bytes, lesion_jpeg: bytes
) -> None:
    files = [
        ("images", ("a.jpg", lesion_jpeg, "image/jpeg")),
        ("images", ("page.jpg", document, "image/jpeg")),
        ("images", ("b.jpg", lesion_jpeg, "image/jpeg")),
    ]
    r = client.post("/api/v1/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["failed"] == 1
    good, bad, other = body["results"]
    assert good["result"]["gate"]["passed"] and other["result"]["gate"]["passed"]
    assert bad["error"] == "image_rejected" and bad["reasons"] and bad["result"] is None


def test_explain_refuses_what_predict_refuses(
    client: TestClient[Litestar], document: bytes
) -> None:
    r = client.post("/api/v1/explain", files={"image": ("page.jpg", document, "image/jpeg")})
    assert r.status_code == 422 and r.json()["error"] == "image_rejected"


def test_live_frames_say_rejected_with_guidance(
    client: TestClient[Litestar], document: bytes, lesion_jpeg: bytes
) -> None:
    dark = jpeg(np.full((450, 600, 3), 8, np.uint8))
    with client.websocket_connect("/api/v1/live") as ws:
        ws.send_bytes(dark)
        reply = ws.receive_json()
        assert reply["rejected"] is True and reply["error"] == "image_rejected"
        assert "too dark" in reply["detail"]
        ws.send_bytes(lesion_jpeg)
        assert ws.receive_json()["gate"]["passed"] is True


def test_rejections_are_counted_by_check(client: TestClient[Litestar], document: bytes) -> None:
    def count() -> float:
        text = client.get("/metrics").text
        lines = [ln for ln in text.splitlines() if ln.startswith("gate_rejections_total{")]
        return sum(float(ln.split()[-1]) for ln in lines if 'check="out_of_distribution"' in ln)

    before = count()
    client.post("/api/v1/predict", files={"image": ("page.jpg", document, "image/jpeg")})
    assert count() == before + 1


def test_ready_says_which_gate_runs(client: TestClient[Litestar]) -> None:
    assert client.get("/health/ready").json()["gate"] == "quality+distribution"


def test_a_model_without_features_runs_quality_checks_only(
    api_settings: Settings, tmp_path: Path, lesion_jpeg: bytes, document: bytes
) -> None:
    # The upstream model (no GAP -> Dense head) as `make convert` builds it.
    upstream = Path(__file__).resolve().parents[2] / "models" / "upstream"
    for name in ("upstream_skin.onnx", "upstream_skin_gate.json"):
        shutil.copy(upstream / name, tmp_path / name)
    settings = replace(api_settings, model_path=tmp_path / "upstream_skin.onnx")
    with TestClient(app=create_app(settings)) as client:
        assert client.get("/health/ready").json()["gate"] == "quality only"
        r = client.post("/api/v1/predict", files={"image": ("a.jpg", lesion_jpeg)})
        assert r.status_code == 200 and r.json()["gate"]["distribution_checked"] is False
        dark = jpeg(np.full((450, 600, 3), 8, np.uint8))
        r = client.post("/api/v1/predict", files={"image": ("dark.jpg", dark)})
        assert r.status_code == 422 and r.json()["reasons"][0]["check"] == "too_dark"


def test_the_server_does_not_start_without_its_gate(api_settings: Settings, tmp_path: Path) -> None:
    model = tmp_path / "skin_lesion.onnx"
    shutil.copy(api_settings.model_path, model)
    from app.inference.classifier import Classifier
    from app.inference.service import load_service

    with pytest.raises(ModelLoadError, match="gate"):
        load_service(replace(api_settings, model_path=model), classifier=Classifier(model, "cpu"))
    gate = json.loads(api_settings.model_path.with_name("skin_lesion_gate.json").read_text())
    (tmp_path / "skin_lesion_gate.json").write_text(json.dumps(gate))
    with pytest.raises(ModelLoadError, match="does not match"):  # its statistics are not there
        load_service(replace(api_settings, model_path=model), classifier=Classifier(model, "cpu"))


def test_a_round_field_of_view_is_filled_then_judged(
    client: TestClient[Litestar], fixture_images: list[tuple[Path, str]]
) -> None:
    """Black outside a disc as wide as the picture is high: as a dermatoscope's lens leaves it.
    Left black, the gate refused 600 of 600 such val images; filled, 10. Filled, a framed
    picture is judged nearly as it is unframed: of all 44 full-resolution originals, 3 framed
    and 1 unframed were refused (2 and 1 with the GPU-only members), and these fixtures hold
    all of them, so the bound is on the refusals framing adds."""
    import cv2

    from tests.unit.test_field_of_view import disc

    refused, refused_unframed = [], []
    for path, _ in fixture_images:
        rgb = cv2.imread(str(path))
        original = client.post("/api/v1/predict", files={"image": (path.name, path.read_bytes())})
        if original.status_code == 422:
            refused_unframed.append(path.name)
        framed, inside = disc(rgb, rgb.shape[0])
        _, data = cv2.imencode(".jpg", framed, [cv2.IMWRITE_JPEG_QUALITY, 92])
        r = client.post("/api/v1/predict", files={"image": (path.name, data.tobytes())})
        if r.status_code == 422:
            refused.append(path.name)
            continue
        assert r.status_code == 200, r.text
        filled = r.json()["gate"]["scores"]["field_of_view_filled"]  # said, not hidden
        assert abs(filled - (1 - inside.mean())) < 0.03
    assert len(refused) <= len(refused_unframed) + 2, (refused, refused_unframed)
    assert len(refused) < len(fixture_images) / 4


def test_a_small_round_field_is_cropped_to_and_its_view_reported(
    client: TestClient[Litestar], fixture_images: list[tuple[Path, str]]
) -> None:
    """A dermatoscope on a phone: a disc 0.6 x the picture's height in black. Left whole it
    was refused as too dark; cropped to the disc, it is judged like the rest."""
    import cv2

    from conversion.devset import in_a_disc

    path = fixture_images[0][0]
    rgb = cv2.imread(str(path))  # 600x450
    height, width = rgb.shape[:2]
    diameter = 0.6 * height
    _, data = cv2.imencode(".jpg", in_a_disc(rgb, diameter), [cv2.IMWRITE_JPEG_QUALITY, 92])
    files = {"image": (path.name, data.tobytes())}

    r = client.post("/api/v1/predict", files=files)
    assert r.status_code == 200, r.text
    scores = r.json()["gate"]["scores"]
    kept = (4 / 3 * diameter * diameter) / (width * height)  # a 4:3 box as tall as the disc
    assert abs(scores["field_of_view_cropped"] - kept) < 0.03
    assert scores["field_of_view_filled"] > 0.1  # then its corners filled

    x, y, w, h = client.post("/api/v1/explain", files=files).json()["explanation"]["view"]["crop"]
    assert abs(h - diameter) <= 0.03 * height and abs(w / h - 4 / 3) < 0.02
    assert abs(x + w / 2 - width / 2) <= 6 and abs(y + h / 2 - height / 2) <= 6
