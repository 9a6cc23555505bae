"""``python -m training levers``: val figures of a fleet run from the members' saved logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.inference.spec import HAM10000_LABELS
from training.ensemble import levers
from training.split import read_split


def _member(run: Path, name: str, logits: np.ndarray) -> None:
    folder = run / name
    folder.mkdir(parents=True)
    config = {"name": name, "arch": "mobilenetv2_035", "size": [200, 150], "seed": 1}
    history = [{"epoch": 1, "val_bma": 0.5, "seconds": 60.0}]
    (folder / "member.json").write_text(
        json.dumps({"config": config, "epochs": 1, "history": history, "best_val_bma": 0.5})
    )
    np.save(folder / "val_logits_best.npy", logits.astype(np.float32))


def test_levers_scores_members_and_their_mean(tmp_path: Path) -> None:
    labels = np.array([HAM10000_LABELS.index(r["dx"]) for r in read_split() if r["split"] == "val"])
    perfect = np.eye(len(HAM10000_LABELS))[labels] * 10
    noise = np.random.default_rng(0).normal(size=perfect.shape)
    for name, logits in (("v1", perfect), ("v2", noise), ("v3", noise[::-1])):
        _member(tmp_path, name, logits)
    figures = levers(tmp_path)
    assert figures["members"]["v1"]["val_bma"] == 1.0
    assert figures["members"]["v2"]["val_bma"] < 0.3
    shipped = figures["ensembles"]["3 x MobileNetV2-0.35, GPU members (shipped before v4)"]
    assert shipped["members"] == ["v1", "v2", "v3"]
    assert 0.3 < shipped["val_bma"] <= 1.0


def test_levers_refuses_logits_of_another_split(tmp_path: Path) -> None:
    _member(tmp_path, "v1", np.zeros((10, len(HAM10000_LABELS))))
    with pytest.raises(ValueError, match="another split"):
        levers(tmp_path)
