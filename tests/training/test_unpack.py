"""Unpacking a mean-head ensemble into member folders: merged again, the members give the same
logits, so a member trained later can replace one of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.training.tiny_split import SIZE


@pytest.mark.tensorflow
@pytest.mark.slow
def test_unpacked_members_merge_back_to_the_same_logits(
    tiny_ensemble: tuple[Path, Path], fixtures_dir: Path, tmp_path: Path
) -> None:
    from training.ensemble import build_ensemble, load_member, raw_model, read_member, unpack
    from training.models import logits_model

    model_path, split = tiny_ensemble
    folders = unpack(model_path, tmp_path / "members", fixtures_dir / "images", split)
    assert [f.name for f in folders] == ["m1", "m2"]
    assert read_member(folders[0])["config"]["arch"] == "mobilenetv2_035"
    x = np.random.default_rng(1).uniform(0, 255, (4, SIZE[1], SIZE[0], 3)).astype(np.float32)
    raw, _, _ = raw_model(model_path)
    expected = logits_model(raw).predict(x, verbose=0)
    merged = logits_model(build_ensemble(folders)).predict(x, verbose=0)
    np.testing.assert_allclose(merged, expected, atol=1e-4)
    # each member: its own backbone, and its block of the merged kernel times the member count
    kernel, bias = raw.get_layer("logits").get_weights()
    rows = kernel.shape[0] // 2
    for i, folder in enumerate(folders):
        member = load_member(folder)
        for got, want in zip(
            member.get_layer("backbone").get_weights(),
            raw.get_layer(f"backbone_{i}").get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(got, want)
        own_kernel, own_bias = member.get_layer("logits").get_weights()
        np.testing.assert_allclose(own_kernel, 2 * kernel[i * rows : (i + 1) * rows], rtol=1e-6)
        np.testing.assert_allclose(own_bias, bias, rtol=1e-6)
        assert (folder / "val_logits_best.npy").is_file()


@pytest.mark.tensorflow
@pytest.mark.slow
def test_a_blended_head_is_not_unpacked(
    tiny_ensemble: tuple[Path, Path], fixtures_dir: Path, tmp_path: Path
) -> None:
    from training.ensemble import unpack

    model_path, split = tiny_ensemble
    blended = tmp_path / "blended.h5"
    shutil.copy(model_path, blended)
    summary = json.loads(model_path.with_suffix(".training.json").read_text())
    summary["head"] = {"kind": "blend of the members' mean head and a joint logistic regression"}
    blended.with_suffix(".training.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="not the members' mean"):
        unpack(blended, tmp_path / "members", fixtures_dir / "images", split)


@pytest.mark.tensorflow
@pytest.mark.slow
def test_a_blended_head_is_undone_to_the_members_own_heads(
    tiny_ensemble: tuple[Path, Path], fixtures_dir: Path, tmp_path: Path
) -> None:
    """``training head`` blends the members' mean head with a joint regression; ``unblend``
    fits the regression again, takes it away and scales what is left by the members the
    reference ensemble (here the mean-head original) also holds."""
    from training.ensemble import load_member, raw_model
    from training.head import refit_head, unblend

    model_path, split = tiny_ensemble
    images = fixtures_dir / "images"
    blended = tmp_path / "blended.h5"
    refit_head(model_path, images, blended, split)
    raw, _, _ = raw_model(model_path)
    kernel, bias = raw.get_layer("logits").get_weights()
    assert not np.allclose(raw_model(blended)[0].get_layer("logits").get_weights()[0], kernel)

    folders, fit = unblend(blended, model_path, tmp_path / "members", images, split)
    assert [f.name for f in folders] == ["m1", "m2"] and fit["paired"] == 2
    assert fit["residual"] < 1e-3
    rows = kernel.shape[0] // 2
    for i, folder in enumerate(folders):
        own_kernel, own_bias = load_member(folder).get_layer("logits").get_weights()
        np.testing.assert_allclose(
            own_kernel, 2 * kernel[i * rows : (i + 1) * rows], atol=1e-3 * np.abs(kernel).max()
        )
        np.testing.assert_allclose(own_bias, bias, atol=1e-3 * max(np.abs(bias).max(), 1.0))

    # a reference that holds none of the members gives no scale, and says so
    stranger = tmp_path / "stranger.h5"
    shutil.copy(model_path, stranger)
    summary = json.loads(model_path.with_suffix(".training.json").read_text())
    for member in summary["config"]["members"]:
        member["name"] = "other_" + member["name"]
    stranger.with_suffix(".training.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="holds none"):
        unblend(blended, stranger, tmp_path / "none", images, split)
