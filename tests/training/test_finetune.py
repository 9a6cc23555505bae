"""Fine-tuning the ensemble's tops on cached activations: the cut is an identity, the criterion is
class-balanced, BatchNorm stays frozen, and a killed run resumes from its last epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.tiny_split import SIZE
from training.finetune import balanced_cross_entropy


def test_balanced_cross_entropy_weighs_each_class_once() -> None:
    logits = np.log(np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.5, 0.5]]))
    labels = np.array([0, 0, 0, 1])
    # class 0: -log 0.9 three times; class 1: -log 0.5 once; the mean of the two class means
    expected = (-np.log(0.9) - np.log(0.5)) / 2
    assert balanced_cross_entropy(logits, labels) == pytest.approx(expected)
    # the plain mean would be dominated by the frequent class
    assert balanced_cross_entropy(logits, labels) > float(np.mean(-np.log([0.9, 0.9, 0.9, 0.5])))


@pytest.mark.tensorflow
@pytest.mark.slow
def test_bottoms_then_tops_are_the_whole_model(tiny_ensemble: tuple[Path, Path]) -> None:
    from training.ensemble import raw_model
    from training.finetune import per_member, split_members, top_model
    from training.models import logits_model

    model, _, _ = raw_model(tiny_ensemble[0])
    bottoms, tops = split_members(model)
    assert len(bottoms) == len(tops) == 2
    x = np.random.default_rng(0).uniform(0, 255, (4, SIZE[1], SIZE[0], 3)).astype(np.float32)
    cuts = np.concatenate([b.predict(x / 127.5 - 1, verbose=0) for b in bottoms], axis=-1)
    trainer = top_model(model, tops)
    widths = [int(t.shape[-1]) for t in trainer.inputs]
    np.testing.assert_allclose(
        trainer.predict(per_member(cuts, widths), verbose=0),
        logits_model(model).predict(x, verbose=0),
        atol=1e-4,
    )


@pytest.mark.tensorflow
@pytest.mark.slow
def test_finetune_trains_the_tops_keeps_batch_norm_and_resumes(
    tiny_ensemble: tuple[Path, Path], fixtures_dir: Path, tmp_path: Path
) -> None:
    import keras

    from training.__main__ import main

    model_path, split = tiny_ensemble
    work, out = tmp_path / "work", tmp_path / "tuned.h5"
    args = ["finetune", str(model_path), "--images", str(fixtures_dir / "images")]
    args += ["--split", str(split), "--work", str(work), "-o", str(out), "--views", "2"]
    assert main([*args, "--epochs", "2", "--lr", "0.01"]) == 0

    record = json.loads(out.with_suffix(".training.json").read_text())["finetune"]
    history = record["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    assert record["best_epoch"] == min(history, key=lambda r: r["val_bce"])["epoch"]
    assert sorted(p.name for p in work.glob("*.npy")) == [
        "train_view0.npy",
        "train_view1.npy",
        "val.npy",
    ]
    before = keras.models.load_model(model_path, compile=False)
    after = keras.models.load_model(out, compile=False)
    top = "block_16_project"
    bn = "block_16_project_BN"
    b0, a0 = before.get_layer("backbone_0"), after.get_layer("backbone_0")
    assert not np.allclose(b0.get_layer(top).get_weights()[0], a0.get_layer(top).get_weights()[0])
    bottom = "block_5_project"  # below the cut: frozen
    np.testing.assert_array_equal(
        b0.get_layer(bottom).get_weights()[0], a0.get_layer(bottom).get_weights()[0]
    )
    for w_before, w_after in zip(
        b0.get_layer(bn).get_weights()[2:], a0.get_layer(bn).get_weights()[2:], strict=True
    ):
        np.testing.assert_array_equal(w_before, w_after)  # moving mean and variance

    # A resumed run keeps the epochs done and the cached views, and trains the rest.
    stamps = {p.name: p.stat().st_mtime_ns for p in work.glob("*.npy")}
    assert main([*args, "--epochs", "3", "--lr", "0.01", "--resume"]) == 0
    resumed = json.loads(out.with_suffix(".training.json").read_text())["finetune"]["history"]
    assert [row["epoch"] for row in resumed] == [1, 2, 3]
    assert resumed[:2] == history
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*.npy")} == stamps
