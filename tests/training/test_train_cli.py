"""The training CLI end to end on a handful of committed images."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.training.tiny_split import alternating_split

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]


def test_train_cli_writes_a_loadable_calibrated_hdf5(tmp_path: Path, fixtures_dir: Path) -> None:
    keras = pytest.importorskip("keras")
    from training.__main__ import main

    images = fixtures_dir / "images"
    split = alternating_split(tmp_path, images)
    out = tmp_path / "tiny.h5"
    code = main(
        [
            "train",
            "--images",
            str(images),
            "--split",
            str(split),
            "--arch",
            "small_cnn",
            "--no-pretrained",
            "--size",
            "32x24",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--batch",
            "4",
            "--no-cache",
            "-o",
            str(out),
        ]
    )
    assert code == 0 and out.is_file()

    model = keras.models.load_model(out, compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (3, 24, 32, 3)).astype(np.float32)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (3, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with h5py.File(out) as fh:
        spec = json.loads(fh.attrs["skinlesion_spec"])
    assert spec["input_width"] == 32 and spec["input_height"] == 24
    assert spec["temperature"] > 0 and 0 <= spec["mel_threshold"] <= 1
    summary = json.loads(out.with_suffix(".training.json").read_text())
    assert len(summary["history"]) == 1
    chosen = summary["logit_adjustment"]
    assert spec["logit_adjustment"] == chosen["tau"]
    assert len(chosen["offsets"]) == 7 and chosen["val"][0]["tau"] == 0.0

    # `adjust` undoes the folded temperature and adjustment and refits them: twice is once.
    adjust = ["adjust", str(out), "--images", str(images), "--split", str(split)]
    assert main(adjust) == 0
    first = keras.models.load_model(out, compile=False).get_layer("logits").get_weights()
    assert main(adjust) == 0
    second = keras.models.load_model(out, compile=False).get_layer("logits").get_weights()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # ...and the same as training wrote, which fitted them on the same val images.
    readjusted = keras.models.load_model(out, compile=False).predict(x, verbose=0)
    np.testing.assert_allclose(readjusted, probs, atol=1e-4)

    # `head` blends the head with a joint one fitted on the train part, then calibrates again.
    before = keras.models.load_model(out, compile=False).get_layer("logits").get_weights()[0]
    flipped = tmp_path / "flipped.h5"  # the lever not kept: train images and their flips
    assert (
        main(
            [
                "head",
                str(out),
                "-o",
                str(flipped),
                "--images",
                str(images),
                "--split",
                str(split),
                "--flips",
            ]
        )
        == 0
    )
    flips_record = json.loads(flipped.with_suffix(".training.json").read_text())["head"]
    assert flips_record["train_views"] == "the images and their three flips"
    head = ["head", str(out), "--images", str(images), "--split", str(split)]
    assert main(head) == 0
    after = keras.models.load_model(out, compile=False)
    assert not np.allclose(after.get_layer("logits").get_weights()[0], before)
    summary = json.loads(out.with_suffix(".training.json").read_text())
    assert summary["head"]["c"] in [r["c"] for r in summary["head"]["val"][1:]]
    assert summary["head"]["val"][0]["c"] is None  # the members' head alone, for comparison
    assert summary["head"]["train_views"] == "the images"
    assert flips_record["val"][0] == summary["head"]["val"][0]  # the same members' head
    assert flips_record["val"][1:] != summary["head"]["val"][1:]  # fitted on other features
    np.testing.assert_allclose(after.predict(x, verbose=0).sum(axis=1), 1.0, atol=1e-5)
    assert main(adjust) == 0  # a later adjust keeps the head's record
    assert json.loads(out.with_suffix(".training.json").read_text())["head"] == summary["head"]
    with pytest.raises(ValueError, match="already has a fitted head"):
        main(head)
