"""The intended-use gate's checks, each on generated images, against the shipped thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.config import default_model_path
from app.inference.gate import (
    Gate,
    GateFileError,
    ImageRejectedError,
    describe,
    gate_path,
    measure,
    quality_view,
)
from app.inference.spec import ModelSpec


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate.load(gate_path(default_model_path(), ModelSpec(name="skin_lesion")))


@pytest.fixture(scope="module")
def lesion(fixture_images: list[tuple[Path, str]]) -> np.ndarray:
    bgr = cv2.imread(str(fixture_images[0][0]), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(bgr[..., ::-1])


def failed(gate: Gate, rgb: np.ndarray, size: tuple[int, int] | None = None) -> set[str]:
    size = size or (rgb.shape[1], rgb.shape[0])
    try:
        gate.check_quality(rgb, size)
    except ImageRejectedError as exc:
        return {r.check for r in exc.result.reasons}
    return set()


def test_a_real_dermoscopic_image_passes_every_quality_check(
    gate: Gate, lesion: np.ndarray
) -> None:
    assert failed(gate, lesion) == set()
    # the stored HAM10000 size and a 224x224 crop, as public sets share them, pass too
    assert failed(gate, cv2.resize(lesion, (200, 150), interpolation=cv2.INTER_AREA)) == set()
    assert (
        failed(gate, cv2.resize(lesion[:, 75:525], (224, 224), interpolation=cv2.INTER_AREA))
        == set()
    )


@pytest.mark.parametrize(
    ("check", "degrade"),
    [
        ("too_small", lambda rgb: cv2.resize(rgb, (100, 75), interpolation=cv2.INTER_AREA)),
        ("too_dark", lambda rgb: (rgb * 0.1).astype(np.uint8)),
        ("too_bright", lambda rgb: np.clip(rgb * 3.0 + 80, 0, 255).astype(np.uint8)),
        ("low_contrast", lambda rgb: np.full_like(rgb, (200, 150, 130))),
        ("blurred", lambda rgb: cv2.GaussianBlur(rgb, (0, 0), 15)),
        (
            "no_colour",
            lambda rgb: np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, 2),
        ),
    ],
)
def test_each_check_refuses_its_own_fault(
    gate: Gate, lesion: np.ndarray, check: str, degrade: object
) -> None:
    bad = degrade(lesion)  # type: ignore[operator]
    reasons = failed(gate, bad)
    assert check in reasons
    # the reason carries the measured value and the threshold it crossed
    with pytest.raises(ImageRejectedError) as info:
        gate.check_quality(bad, (bad.shape[1], bad.shape[0]))
    reason = next(r for r in info.value.result.reasons if r.check == check)
    assert reason.threshold == gate.quality[check]
    assert reason.value == measure(bad, (bad.shape[1], bad.shape[0]), gate.view)[check]
    assert str(info.value).startswith("Not analysed:")


def test_override_measures_but_does_not_refuse(gate: Gate, lesion: np.ndarray) -> None:
    dark = (lesion * 0.1).astype(np.uint8)
    result = gate.check_quality(dark, (600, 450), override=True)
    assert not result.passed and result.overridden
    assert result.as_dict()["outside_intended_use"] is True


def test_too_small_uses_the_size_as_sent_not_the_reduced_decode(
    gate: Gate, lesion: np.ndarray
) -> None:
    # a large JPEG decodes at 1/2 or 1/4 scale: the floor applies to the upload's own size
    small_decode = cv2.resize(lesion, (150, 112), interpolation=cv2.INTER_AREA)
    assert "too_small" not in failed(gate, small_decode, (600, 450))
    assert "too_small" in failed(gate, small_decode, (150, 112))


def test_messages_are_plain_words_most_fixable_first() -> None:
    from app.inference.gate import Reason

    text = describe([Reason("out_of_distribution", 40, 20), Reason("blurred", 1, 3)])
    assert text.index("blurred") < text.index("dermoscopic")
    assert "hold the dermatoscope still" in text


def test_a_gate_file_is_required_and_checked(tmp_path: Path) -> None:
    with pytest.raises(GateFileError, match="no intended-use gate file"):
        Gate.load(tmp_path / "missing_gate.json")
    shipped = json.loads(gate_path(default_model_path(), ModelSpec(name="skin_lesion")).read_text())
    shipped["distribution"]["sha256"] = "0" * 64  # statistics that are not the ones fitted
    (tmp_path / "x_gate.json").write_text(json.dumps(shipped))
    with pytest.raises(GateFileError, match="does not match"):
        Gate.load(tmp_path / "x_gate.json")


def test_the_checks_measure_the_model_picture_itself_not_a_resize_of_their_own(
    gate: Gate, lesion: np.ndarray
) -> None:
    # the served model's input size is the shipped gate's view: no second resize
    assert gate.view == ModelSpec.from_metadata(ort_meta(default_model_path())).input_size
    picture = cv2.resize(lesion, gate.view, interpolation=cv2.INTER_AREA)
    assert quality_view(lesion, gate.view, picture) is picture
    # a picture of another size (an older model's) is not used: the view is made to the gate's
    other = quality_view(lesion, gate.view, cv2.resize(lesion, (160, 120)))
    assert other.shape[:2] == (gate.view[1], gate.view[0])
    # and the scores the gate reports are those of that picture
    result = gate.check_quality(lesion, (600, 450), resized=picture)
    assert result.scores == measure(np.zeros((2, 2, 3), np.uint8), (600, 450), gate.view, picture)


def test_a_gate_file_names_its_view_and_older_files_keep_160x120(tmp_path: Path) -> None:
    shipped = json.loads(gate_path(default_model_path(), ModelSpec(name="skin_lesion")).read_text())
    shipped["distribution"] = None
    del shipped["quality"]["view"]
    (tmp_path / "old_gate.json").write_text(json.dumps(shipped))
    assert Gate.load(tmp_path / "old_gate.json").view == (160, 120)
    for bad in ([100, 75], [200], "200x150", [200.0, 150.0]):
        shipped["quality"]["view"] = bad
        (tmp_path / "bad_gate.json").write_text(json.dumps(shipped))
        with pytest.raises(GateFileError, match="quality view"):
            Gate.load(tmp_path / "bad_gate.json")


def ort_meta(model: Path) -> dict[str, str]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)
