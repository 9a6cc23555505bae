"""The layers import one way: the inference layer and the offline tools never load the web
framework (issue 14's first step: the error classes are a leaf)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_inference_and_conversion_do_not_import_litestar() -> None:
    code = (
        "import sys\n"
        "import app.inference.service, app.inference.explain, app.inference.gate\n"
        "import conversion.build, conversion.cam, conversion.gate, conversion.gradcam\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'litestar')\n"
        "print(loaded[:5])\n"
        "raise SystemExit(1 if loaded else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_image_error_is_an_app_error() -> None:
    from app.errors import AppError
    from app.inference.preprocess import ImageError

    assert issubclass(ImageError, AppError)
