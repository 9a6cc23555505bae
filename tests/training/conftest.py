"""Shared by the training tests: a tiny calibrated ensemble HDF5 made from random weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.tiny_split import SIZE, alternating_split


@pytest.fixture(scope="module")
def tiny_ensemble(
    tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path
) -> tuple[Path, Path]:
    """A calibrated two-member MobileNetV2-0.35 ensemble HDF5 (random weights) and its split."""
    pytest.importorskip("keras")
    from training.data import load_split_arrays, part_labels
    from training.ensemble import build_ensemble
    from training.models import build_model
    from training.portable import BEST, MEMBER_JSON
    from training.split import read_split
    from training.train import finalise

    tmp = tmp_path_factory.mktemp("finetune")
    members, configs = [], []
    for seed in (1, 2):
        folder = tmp / f"m{seed}"
        folder.mkdir()
        import keras

        keras.utils.set_random_seed(seed)
        build_model("mobilenetv2_035", SIZE, None).save_weights(folder / BEST)
        config = {"name": f"m{seed}", "arch": "mobilenetv2_035", "size": list(SIZE)}
        (folder / MEMBER_JSON).write_text(json.dumps({"config": config}))
        members.append(folder)
        configs.append(config)
    split = alternating_split(tmp, fixtures_dir / "images")
    rows = read_split(split)
    x_val, y_val = load_split_arrays(fixtures_dir / "images", rows, "val", SIZE, cache=False)
    out = tmp / "ensemble.h5"
    finalise(
        build_ensemble(members),
        x_val,
        y_val,
        out,
        SIZE,
        {  # as `training ensemble` records it
            "config": {"arch": "ensemble of 2", "size": list(SIZE), "members": configs},
            "members": [{"name": c["name"], "best_val_bma": 0.0, "epochs": 1} for c in configs],
        },
        train_labels=part_labels(rows, "train"),
    )
    return out, split
