"""``verify`` must have something to compare: an empty gate list is not a pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from conversion.__main__ import main
from conversion.errors import ConversionError
from conversion.verify import Gate, VerifyReport, verify

REPO = Path(__file__).resolve().parents[2]
FP32 = REPO / "models" / "skin_lesion.onnx"


def test_verify_report_without_gates_does_not_pass() -> None:
    assert not VerifyReport(images=14).passed
    assert VerifyReport(images=14, gates=[Gate("g", 1.0, 1.0, "min")]).passed


def test_verify_fp32_alone_refused(fixtures_dir: Path) -> None:
    images = fixtures_dir / "images"
    with pytest.raises(ConversionError, match="nothing to compare"):
        verify(FP32, images_dir=images, labels_csv=images / "labels.csv", part=None)


def test_verify_cli_fp32_alone_exits_nonzero(
    fixtures_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = fixtures_dir / "images"
    argv = ["verify", str(FP32), "--images", str(images)]
    argv += ["--labels-csv", str(images / "labels.csv"), "--split", "all"]
    assert main(argv) == 2
    assert "--int8" in capsys.readouterr().err
