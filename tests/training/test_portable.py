"""The backend-agnostic recipe (training.portable) and the ensemble it feeds."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.portable import (
    MemberConfig,
    class_weights,
    geometric,
    load_part,
    mix_batch,
    pack,
    targets,
    teacher_probabilities,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def packed(tmp_path: Path, fixtures_dir: Path) -> Path:
    """The committed originals stored as HAM10000 stores them: 200x150 JPEGs."""
    with (fixtures_dir / "images" / "labels.csv").open(newline="") as fh:
        rows = [
            {**row, "split": "train" if i % 2 == 0 else "val"}
            for i, row in enumerate(csv.DictReader(fh))
        ]
    images = tmp_path / "stored"
    images.mkdir()
    for row in rows:
        original = cv2.imread(str(fixtures_dir / "images" / f"{row['image_id']}.jpg"))
        small = cv2.resize(original, (200, 150), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(images / f"{row['image_id']}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 90])
    out = tmp_path / "pack"
    assert pack(images, rows, out, ("train", "val")) == len(rows)
    return out


def test_mixup_and_cutmix_labels_match_what_was_mixed() -> None:
    rng = np.random.default_rng(0)
    x = np.stack([np.full((30, 40, 3), v, np.float32) for v in (0.0, 100.0, 200.0, 50.0)])
    y = np.eye(7, dtype=np.float32)[[0, 1, 2, 3]]
    for _ in range(20):
        mixed, soft = mix_batch(x, y, rng)
        np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
        # Each image is a blend of constant images: its mean must be the label-weighted mean.
        np.testing.assert_allclose(
            mixed.mean(axis=(1, 2, 3)), soft[:, :4] @ x[:, 0, 0, 0], rtol=1e-4
        )


def test_distilled_targets_blend_the_teacher_into_the_smoothed_label() -> None:
    labels = np.array([0, 4, 6])
    teacher = np.random.default_rng(0).dirichlet(np.ones(7), size=3).astype(np.float32)
    plain = targets(labels, MemberConfig(name="x", label_smoothing=0.1))
    np.testing.assert_allclose(plain[np.arange(3), labels], 0.9 + 0.1 / 7, rtol=1e-6)
    half = targets(labels, MemberConfig(name="x", label_smoothing=0.1), teacher)
    np.testing.assert_allclose(half, 0.5 * plain + 0.5 * teacher, rtol=1e-6)
    np.testing.assert_allclose(half.sum(axis=1), 1.0, rtol=1e-6)
    only = targets(labels, MemberConfig(name="x", distill_weight=1.0), teacher)
    np.testing.assert_allclose(only, teacher, rtol=1e-6)


def test_label_and_target_columns_are_mixed_by_the_same_share() -> None:
    """The sample weight comes from the mixed label, the loss from the mixed target: one mix."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (6, 30, 40, 3)).astype(np.float32)
    label = np.eye(7, dtype=np.float32)[[0, 1, 2, 3, 4, 5]]
    for _ in range(20):
        _, mixed = mix_batch(x, np.concatenate([label, label], axis=1), rng)
        first, second = np.split(mixed, 2, axis=1)
        np.testing.assert_array_equal(first, second)


def test_the_teacher_answers_as_the_served_model_and_softens_by_temperature(
    packed: Path,
) -> None:
    from app.inference.classifier import Classifier
    from app.inference.preprocess import to_model_input

    model = ROOT / "models" / "skin_lesion.onnx"
    images, _ = load_part(packed, "val", (200, 150))
    served = Classifier(model, "cpu")
    batch = np.stack([to_model_input(image, served.spec) for image in images])
    expected = served.run(batch)[:, :7]
    np.testing.assert_allclose(teacher_probabilities(model, images, 1.0), expected, atol=1e-5)
    soft = teacher_probabilities(model, images, 2.0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    # Temperature 2 halves every log-odds between two classes.
    np.testing.assert_allclose(
        np.log(soft[:, 1:] / soft[:, :1]), np.log(expected[:, 1:] / expected[:, :1]) / 2, atol=1e-3
    )
    with pytest.raises(ValueError, match="takes"):
        teacher_probabilities(model, images[:, :100], 1.0)
    with pytest.raises(FileNotFoundError, match="no teacher"):
        teacher_probabilities(model.with_name("absent.onnx"), images, 1.0)


def test_geometric_warps_with_mirrored_borders() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((4, 150, 200, 3), 173, np.uint8)
    assert (geometric(flat, rng) == 173).all()  # no black fill at rotated corners
    ramp = np.tile(np.arange(200, dtype=np.uint8)[None, None, :, None], (4, 150, 1, 3))
    out = geometric(ramp, rng)
    assert out.shape == ramp.shape and out.dtype == np.uint8
    assert not np.array_equal(out, ramp)


def test_class_weights_favour_rare_classes_with_nevi_capped() -> None:
    labels = np.array([4] * 5000 + [3] * 50 + [6] * 500)
    weights = class_weights(labels, nv_per_epoch=1500)
    assert weights[3] > weights[6] > weights[4]
    assert weights.mean() == pytest.approx(1.0)


def test_a_pack_decodes_to_the_pixels_serving_sees(packed: Path) -> None:
    from training.data import load_images

    with (packed / "labels.csv").open(newline="") as fh:
        ids = [r["image_id"] for r in csv.DictReader(fh) if r["split"] == "val"]
    ours, labels = load_part(packed, "val", (200, 150))
    serving = load_images(packed / "images", ids, (200, 150))
    assert np.array_equal(ours, serving)
    assert len(labels) == len(ids)


def test_unknown_member_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown member settings"):
        MemberConfig.from_dict({"name": "x", "epochz": 3})


def _member_cmd(packed: Path, out: Path, cfg: MemberConfig, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "training.portable", "member", "--data", str(packed)]
    cmd += ["--out", str(out), "--config", json.dumps(asdict(cfg))]
    return [*cmd, "--resume"] if resume else cmd


@pytest.mark.tensorflow
@pytest.mark.slow
def test_a_killed_member_resumes_where_it_stopped_and_members_merge_exactly(
    packed: Path, tmp_path: Path
) -> None:
    pytest.importorskip("keras")
    from training.ensemble import build_ensemble
    from training.models import build_model, logits_model

    cfg = MemberConfig(
        name="tiny", size=(64, 48), batch=4, max_epochs=6, warmup_epochs=1, nv_per_epoch=10
    )
    out = tmp_path / "tiny"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(_member_cmd(packed, out, cfg, False), cwd=ROOT, env=env)
    deadline = time.monotonic() + 240

    def epochs_done() -> int:  # state.json is replaced whole, so it reads complete or absent
        state = out / "state.json"
        return len(json.loads(state.read_text())["history"]) if state.is_file() else 0

    while epochs_done() < 2:  # two epochs checkpointed: Keras keeps the one before the latest
        assert proc.poll() is None, "the member stopped before its second checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = epochs_done()
    assert done_before < cfg.max_epochs, "killed too late to test resuming"
    # As if the kill had landed mid-write: the latest backup is torn, the one before it whole.
    (out / "backup" / "latest.weights.h5").write_bytes(b"torn by a kill")

    subprocess.run(_member_cmd(packed, out, cfg, True), cwd=ROOT, env=env, check=True)
    member = json.loads((out / "member.json").read_text())
    epochs = [h["epoch"] for h in member["history"]]
    assert epochs[:done_before] == list(range(1, done_before + 1))  # kept, not restarted
    assert epochs[-1] == cfg.max_epochs and len(epochs) <= cfg.max_epochs + 1

    second = tmp_path / "second"
    subprocess.run(
        _member_cmd(
            packed, second, MemberConfig(**{**asdict(cfg), "seed": 2, "max_epochs": 1}), False
        ),
        cwd=ROOT,
        env=env,
        check=True,
    )
    merged = build_ensemble([out, second])
    x = np.random.default_rng(0).uniform(0, 255, (3, 48, 64, 3)).astype(np.float32)
    own = []
    for folder in (out, second):
        model = build_model(cfg.arch, cfg.size, None)
        model.load_weights(folder / "best.weights.h5")
        own.append(logits_model(model).predict(x, verbose=0))
    np.testing.assert_allclose(
        logits_model(merged).predict(x, verbose=0), np.mean(own, axis=0), atol=1e-4
    )


def test_every_committed_plan_reads_as_member_settings() -> None:
    """A misspelt setting in a plan would only show on a GPU lease, minutes into it."""
    from training.portable import read_plan

    plans = sorted(Path("training/plans").glob("*.json"))
    assert plans
    for plan in plans:
        members = read_plan(plan)
        assert members and len({m.name for m in members}) == len(members), plan.name
