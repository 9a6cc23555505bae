"""The shipped model, through the serving path, on committed full-resolution fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.config import default_model_path
from app.inference.classifier import Classifier
from app.inference.preprocess import preprocess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(default_model_path(), "cpu", threads=1)


@pytest.fixture(scope="module")
def fixture_probs(
    classifier: Classifier, fixture_images: list[tuple[Path, str]]
) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([preprocess(p.read_bytes(), classifier.spec) for p, _ in fixture_images])
    labels = np.array([classifier.spec.labels.index(dx) for _, dx in fixture_images])
    return classifier.run(x), labels


def test_bundled_model_is_our_own_calibrated_model(classifier: Classifier) -> None:
    manifest = json.loads((REPO / "models" / "manifest.json").read_text())
    assert default_model_path().resolve() == (REPO / "models" / manifest["preferred"]).resolve()
    assert not manifest["preferred"].startswith("upstream/"), "still serving the interim model"
    spec = classifier.spec
    assert spec.labels == ("akiec", "bcc", "bkl", "df", "nv", "vasc", "mel")
    assert spec.temperature is not None and spec.temperature > 0
    assert spec.mel_threshold is not None and 0 < spec.mel_threshold < 1
    assert "CC BY-NC-SA" in spec.license


def test_bundled_model_predicts_fixtures_better_than_chance(
    fixture_probs: tuple[np.ndarray, np.ndarray],
) -> None:
    probs, labels = fixture_probs
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    top1 = float((probs.argmax(1) == labels).mean())
    p_true = float(probs[np.arange(len(labels)), labels].mean())
    # Two images per class: chance is 1/7 top-1 and 1/7 mean probability on the true class.
    assert top1 >= 0.5, f"top-1 on the 14 fixtures is {top1:.2f}"
    assert p_true > 2 / 7, f"mean P(true class) is {p_true:.2f}"


def test_bundled_model_flags_melanoma_fixtures_by_threshold(
    classifier: Classifier, fixture_probs: tuple[np.ndarray, np.ndarray]
) -> None:
    probs, labels = fixture_probs
    mel = classifier.spec.labels.index("mel")
    for row in probs:
        described = classifier.describe(row)
        assert described.mel_flag == (row[mel] >= classifier.spec.mel_threshold)
        assert type(described.mel_flag) is bool  # JSON true/false, never a numpy bool
        assert described.label == classifier.spec.labels[int(np.argmax(row))]
        assert described.confidence == pytest.approx(float(row.max()))
        assert list(described.probabilities) == list(classifier.spec.labels)
        assert list(described.probabilities.values()) == pytest.approx(row.tolist())
    # The threshold was chosen for high sensitivity on val: melanomas should rank high.
    mel_scores = probs[labels == mel, mel]
    assert (mel_scores >= np.median(probs[labels != mel, mel])).all()


def test_describe_refuses_non_finite_probabilities(classifier: Classifier) -> None:
    from app.inference.classifier import ModelOutputError

    for bad in (np.nan, np.inf):
        probs = np.full(len(classifier.spec.labels), 0.1, np.float32)
        probs[3] = bad
        with pytest.raises(ModelOutputError, match="non-finite"):
            classifier.describe(probs)


def test_bundled_files_match_the_manifest() -> None:
    # A model file replaced without re-running the conversion would serve unrecorded weights.
    from app.inference.classifier import file_sha256

    manifest = json.loads((REPO / "models" / "manifest.json").read_text())
    assert {"fp32", "int8", "cam"} <= manifest["files"].keys()
    for kind, entry in manifest["files"].items():
        path = REPO / "models" / entry["path"]
        assert file_sha256(path) == entry["sha256"] and path.stat().st_size == entry["size"], kind


def test_bundled_cam_model_explains_the_served_predictions(
    classifier: Classifier, fixture_images: list[tuple[Path, str]]
) -> None:
    from app.inference.explain import Explainer, cam_model_path

    explainer = Explainer(cam_model_path(classifier.path, classifier.spec), classifier.spec)
    data = fixture_images[0][0].read_bytes()
    tensor = preprocess(data, classifier.spec)
    probabilities = classifier.run(tensor[None])[0]
    label = classifier.spec.labels[int(np.argmax(probabilities))]
    explanation = explainer.explain(data, label)
    assert explanation.evidence  # the top class has evidence somewhere
    cam = explainer.class_map(tensor, label)
    assert cam.max() == 1.0 and cam.min() >= 0
