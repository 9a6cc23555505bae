"""Grad-CAM explanations on the result page: the heat map, its caveat, ownership, and where
the evidence lies (the tiny model's class maps are known: a linear map of each pixel's colour)."""

from __future__ import annotations

import io
import re
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from onnx import numpy_helper
from PIL import Image

from app.config import Settings
from app.inference.explain import Explainer, cam_model_path
from app.inference.preprocess import preprocess
from app.inference.spec import ModelSpec

from .conftest import make_client, register, upload

ANALYSIS = re.compile(r"/analyses/([0-9a-f-]{36})$")


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def test_explanation_shown_with_its_caveat_to_the_owner_only(
    client: TestClient[Litestar], fixture_images: list[tuple[Path, str]]
) -> None:
    register(client, "alice")
    location = upload(client, "Pat", [("a.jpg", fixture_images[0][0].read_bytes())])
    match = ANALYSIS.search(location)
    assert match
    page = client.get(location).text
    assert 'id="explanation"' in page and "not an outline of the lesion" in page
    assert "Drawn by the model in service now" not in page  # the same model made the result
    r = client.get(f"/analyses/{match.group(1)}/explanation.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "no-store" in r.headers["cache-control"]
    overlay = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (320, 320, 3)  # the tiny model's square view, 320 wide
    bob = TestClient(app=client.app)  # shares the running app, has its own cookies
    register(bob, "bob")
    assert bob.get(f"/analyses/{match.group(1)}/explanation.png").status_code == 404


def test_explanation_unavailable_without_a_cam_model(
    sqlite_settings: Settings, tmp_path: Path, fixture_images: list[tuple[Path, str]]
) -> None:
    alone = tmp_path / "alone" / "tiny.onnx"
    alone.parent.mkdir()
    shutil.copy(sqlite_settings.model_path, alone)
    gate = sqlite_settings.model_path.with_name("tiny-test-model_gate.json")
    shutil.copy(gate, alone.with_name(gate.name))  # the gate, but no CAM model beside it
    with make_client(replace(sqlite_settings, model_path=alone)) as client:
        register(client, "alice")
        location = upload(client, "Pat", [("a.jpg", fixture_images[0][0].read_bytes())])
        assert client.get(location).status_code == 200
        assert 'id="explanation"' not in client.get(location).text  # predictions still work
        r = client.get(f"{location}/explanation.png")
        assert r.status_code == 501 and "python -m conversion cam" in r.text


def test_explanation_puts_the_evidence_where_the_colour_is(tiny_model: Path) -> None:
    # The tiny model's class map at a pixel is its colour times the class's weights. A red
    # square top left on black (PNG: no JPEG ringing): the class that red raises most has its
    # evidence there and none on black, so the map is not transposed, flipped or shifted.
    model = onnx.load(str(tiny_model))
    weights = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w"))
    spec = ModelSpec.from_metadata({p.key: p.value for p in model.metadata_props})
    explainer = Explainer(cam_model_path(tiny_model, spec), spec)
    image = np.zeros((320, 320, 3), np.uint8)
    image[:96, :96] = (255, 0, 0)
    data = _png(image)
    raised = spec.labels[int(np.argmax(weights[0]))]
    cam = explainer.class_map(preprocess(data, spec), raised)
    rows, columns = cam.shape
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    assert peak[0] < rows * 0.3 and peak[1] < columns * 0.3
    assert cam[rows // 2 :, :].max() == 0 and cam[:, columns // 2 :].max() == 0
    explanation = explainer.explain(data, raised)
    assert explanation.evidence and explanation.grid == (rows, columns)
    lowered = int(np.argmin(weights[0]))
    assert weights[0, lowered] < 0  # red lowers this class's score: no evidence anywhere
    assert not explainer.explain(data, spec.labels[lowered]).evidence


def test_the_map_and_its_crop_place_the_evidence_on_the_upload(tiny_model: Path) -> None:
    # A 16:9 upload of a square model: the model sees the centre 450x450. A red "lesion" at a
    # known place in the original: the map's peak, carried back through the crop, lands on it.
    model = onnx.load(str(tiny_model))
    weights = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w"))
    spec = ModelSpec.from_metadata({p.key: p.value for p in model.metadata_props})
    explainer = Explainer(cam_model_path(tiny_model, spec), spec)
    image = np.zeros((450, 800, 3), np.uint8)
    lesion_x, lesion_y = 420, 300  # centre of the lesion in the upload's pixels
    image[lesion_y - 40 : lesion_y + 40, lesion_x - 40 : lesion_x + 40] = (255, 0, 0)
    explanation = explainer.explain(_png(image), spec.labels[int(np.argmax(weights[0]))])
    assert explanation.crop == (175, 0, 450, 450)  # (800 - 450) / 2
    values = explanation.values
    assert values.min() >= 0 and values.max() == pytest.approx(1.0)
    rows, columns = values.shape
    row, column = np.unravel_index(int(np.argmax(values)), values.shape)
    x, y, w, h = explanation.crop
    peak_x = x + (column + 0.5) * w / columns
    peak_y = y + (row + 0.5) * h / rows
    assert abs(peak_x - lesion_x) <= 40 and abs(peak_y - lesion_y) <= 40


@pytest.mark.parametrize(
    ("size", "aspect", "box"),
    [
        ((600, 450), 4 / 3, (0, 0, 600, 450)),
        ((800, 450), 4 / 3, (100, 0, 600, 450)),
        ((450, 600), 4 / 3, (0, 131, 450, 338)),
        ((224, 224), 4 / 3, (0, 28, 224, 168)),
    ],
)
def test_crop_box_is_the_crop_the_model_sees(
    size: tuple[int, int], aspect: float, box: tuple[int, int, int, int]
) -> None:
    from app.inference.preprocess import center_crop_to_aspect, crop_box

    assert crop_box(*size, aspect) == box
    width, height = size
    marked = np.arange(width * height, dtype=np.int64).reshape(height, width)
    kept = center_crop_to_aspect(marked[..., None], aspect)[..., 0]
    x, y, w, h = box
    assert np.array_equal(kept, marked[y : y + h, x : x + w])


def test_the_report_prints_the_explanation_beside_the_image(
    client: TestClient[Litestar], fixture_images: list[tuple[Path, str]]
) -> None:
    from pypdf import PdfReader

    register(client, "alice")
    location = upload(client, "Pat", [("a.jpg", fixture_images[0][0].read_bytes())])
    pdf = PdfReader(io.BytesIO(client.get(f"{location}/report.pdf").content))
    assert len(pdf.pages) == 1
    page = pdf.pages[0]
    assert len(page.images) == 2  # the image and the heat map
    text = " ".join(page.extract_text().split())
    assert "Where the model looked" in text and "not an outline of the lesion" in text
