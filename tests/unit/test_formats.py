"""The input-format registry: every entry point asks it, so a new format is one module plus its
entry in ``FORMATS``, and nothing else changes (issue 14, step 3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.inference import formats
from app.inference.formats.base import ImageError, UnsupportedImageError

REPO = Path(__file__).resolve().parents[2]

# A tiny fake format: binary PPM (netpbm P6), 8-bit RGB. Everything it needs is here.
PPM_MODULE = '''
"""PPM (netpbm P6, 8-bit RGB): a format added to prove the registry."""

from __future__ import annotations

import numpy as np

from app.inference.formats.base import ImageError, ImageInfo, Picture, check_budget, encode_png


def _parse(data: bytes) -> tuple[int, int, int]:
    fields = data.split(maxsplit=4)
    if len(fields) < 5 or fields[3] != b"255":
        raise ImageError("unreadable ppm header")
    width, height = int(fields[1]), int(fields[2])
    return width, height, len(data) - len(fields[4])


class Ppm:
    name = "ppm"
    label = "PPM"
    note = "8-bit"
    media_type = "image/x-portable-pixmap"
    accept = ("image/x-portable-pixmap", ".ppm")

    def sniff(self, data: bytes) -> bool:
        return data.startswith(b"P6")

    def header(self, data: bytes, max_pixels: int) -> ImageInfo:
        width, height, _ = _parse(data)
        check_budget(self.name, width, height, max_pixels)
        return ImageInfo(self.name, width, height)

    def decode(self, data, target, max_pixels):  # type: ignore[no-untyped-def]
        info = self.header(data, max_pixels)
        start = _parse(data)[2]
        pixels = np.frombuffer(data, np.uint8, info.width * info.height * 3, start)
        return pixels.reshape(info.height, info.width, 3).copy(), (info.width, info.height)

    def picture(self, data: bytes, max_pixels: int) -> Picture:
        return Picture(encode_png(self.decode(data, None, max_pixels)[0]), "image/png")
'''

# Run inside the copy: the inference path, the stored picture, the PDF, the page and API strings
# and a real prediction through the app, for a PPM and for the PNG of the same pixels.
CHECKS = """
import io, json, sys
import numpy as np
from PIL import Image
from litestar.testing import TestClient

from app import analyses
from app.config import Settings
from app.inference import formats
from app.inference.preprocess import (
    ImageTooLargeError, UnsupportedImageError, prepare, read_header, sniff_format,
)
from app.inference.spec import ModelSpec
from app.main import create_app
from app.reports.pdf import _thumbnail

from pathlib import Path
jpeg, model, data_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]) / "data"
rgb = np.array(Image.open(jpeg).convert("RGB"))
h, w = rgb.shape[:2]
ppm = f"P6\\n{w} {h}\\n255\\n".encode() + rgb.tobytes()
buf = io.BytesIO()
Image.fromarray(rgb).save(buf, "PNG")
png = buf.getvalue()

assert sniff_format(ppm) == "ppm"
assert read_header(ppm).width == w
try:
    read_header(ppm, max_pixels=w * h - 1)
    raise AssertionError("no budget check")
except ImageTooLargeError:
    pass
try:
    sniff_format(b"GIF89a" + bytes(200))
    raise AssertionError("GIF accepted")
except UnsupportedImageError as exc:
    assert "PPM" in str(exc), exc
spec = ModelSpec("fake", input_width=160, input_height=120)
assert np.array_equal(prepare(ppm, spec).tensor, prepare(png, spec).tensor)
shown = analyses.picture(ppm)
assert shown.media_type == "image/png"
assert np.array_equal(np.array(Image.open(io.BytesIO(shown.data)).convert("RGB")), rgb)
thumb = _thumbnail(ppm)
assert thumb is not None and thumb.size == _thumbnail(png).size
assert formats.listing("or") == "JPEG, PNG, DICOM or PPM"
assert ".ppm" in formats.accept().split(",")

settings = Settings(api_auth=False, model_path=model, providers="cpu", ort_threads=1,
                    data_dir=data_dir, dev=True)
with TestClient(app=create_app(settings)) as client:
    answers = []
    for name, data in (("x.bin", ppm), ("x.png", png)):
        r = client.post("/api/v1/predict", files={"image": (name, data)})
        assert r.status_code == 200, r.text
        answers.append(r.json()["probabilities"])
    assert answers[0] == answers[1], answers
    schema = json.dumps(client.get("/schema/openapi.json").json())
    assert "JPEG, PNG, DICOM or PPM" in schema
print("ok")
"""


def _copy_with_ppm(root: Path) -> Path:
    """The app package copied, plus the PPM module and its entry in the registry: nothing else."""
    shutil.copytree(
        REPO / "app", root / "app", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    package = root / "app" / "inference" / "formats"
    (package / "ppm.py").write_text(textwrap.dedent(PPM_MODULE))
    registry = package / "__init__.py"
    text = registry.read_text()
    line = "FORMATS: tuple[Format, ...] = (Jpeg(), Png(), Dicom())"
    assert line in text
    registry.write_text(
        text.replace(
            line,
            "from app.inference.formats.ppm import Ppm  # noqa: E402\n\n"
            "FORMATS: tuple[Format, ...] = (Jpeg(), Png(), Dicom(), Ppm())",
        )
    )
    return root


def test_a_new_format_needs_one_module_and_its_registry_entry(
    tmp_path: Path, fixture_images: list[tuple[Path, str]]
) -> None:
    from app.config import default_model_path

    model = default_model_path()
    if not model.is_file():
        pytest.skip(f"no bundled model at {model}")
    root = _copy_with_ppm(tmp_path / "tree")
    done = subprocess.run(
        [sys.executable, "-c", CHECKS, str(fixture_images[0][0]), str(model), str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("APP_")},
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (
        done.stdout[-3000:] + done.stderr[-3000:]
    )


def test_the_registry_recognises_content_not_names(
    fixture_images: list[tuple[Path, str]],
) -> None:
    jpeg = fixture_images[0][0].read_bytes()
    assert formats.format_of(jpeg).name == "jpeg"
    assert formats.format_of(b"\x89PNG\r\n\x1a\n" + bytes(30)).name == "png"
    assert formats.format_of(bytes(128) + b"DICM" + bytes(10)).name == "dicom"
    with pytest.raises(UnsupportedImageError, match="only JPEG, PNG and DICOM images"):
        formats.format_of(b"GIF89a" + bytes(200))
    with pytest.raises(ImageError, match="empty upload"):
        formats.format_of(b"")


def test_every_format_names_its_media_types_and_pictures(
    fixture_images: list[tuple[Path, str]], make_dicom: object
) -> None:
    jpeg = fixture_images[0][0].read_bytes()
    assert formats.listing("or", notes=True) == "JPEG, PNG or DICOM (one colour frame)"
    assert formats.accept() == "image/jpeg,image/png,application/dicom,.dcm"
    shown = formats.format_of(jpeg).picture(jpeg, 10**8)
    assert (shown.data, shown.media_type) == (jpeg, "image/jpeg")  # browsers read it as sent
    dicom = make_dicom(jpeg)  # type: ignore[operator]
    shown = formats.format_of(dicom).picture(dicom, 10**8)
    assert shown.media_type == "image/png" and shown.data.startswith(b"\x89PNG")
