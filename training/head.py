"""A joint head for the ensemble, fitted on the train split's pooled features.

The assembled ensemble's Dense head is the mean of its members' heads: each member learnt to
read only its own backbone. A multinomial logistic regression on all the members' pooled
features at once (the same 3 x 1280 numbers the head reads) can weigh one member's evidence
against another's. It is blended half and half with the members' mean head, each first
scaled by its own temperature fitted on val, so neither head's logit scale decides the blend,
and the half that is the members' head keeps what they learnt from augmented images.

Both heads are linear in the same features, so the blend is one Dense layer again: the graph,
its cost, the gate's features and the explanation model are unchanged in shape. The inverse
regularisation strength C is chosen on **val** (the highest balanced accuracy after the usual
``finalise``: logit adjustment, temperature, melanoma threshold); the test split is not read.

    python -m training head models/skin_lesion.h5
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.inference.spec import HAM10000_LABELS
from conversion.metrics import balanced_accuracy
from training.calibration import class_prior, fit_logit_adjustment, fit_temperature

log = logging.getLogger(__name__)

C_GRID = (5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3)
# The members' mean head's share: the even split (0.25 and 0.75 looked no better on val).
MEMBERS_SHARE = 0.5
MEL = HAM10000_LABELS.index("mel")
# unblend's check: a recovered member block may differ from the reference's by this share of
# its norm (the shipped model's: about 0.01, from a regression fitted on another CPU)
MAX_UNBLEND_RESIDUAL = 0.05


@dataclass(frozen=True)
class Linear:
    """logits = features @ kernel + bias."""

    kernel: np.ndarray  # [F, classes]
    bias: np.ndarray  # [classes]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features @ self.kernel + self.bias)

    def scaled(self, factor: float) -> Linear:
        return Linear(self.kernel * factor, self.bias * factor)


def blend(a: Linear, b: Linear, share_a: float) -> Linear:
    """One linear head whose logits are share_a * a + (1 - share_a) * b."""
    return Linear(
        share_a * a.kernel + (1 - share_a) * b.kernel, share_a * a.bias + (1 - share_a) * b.bias
    )


def fit_joint_head(features: np.ndarray, labels: np.ndarray, c: float) -> Linear:
    """Multinomial logistic regression on standardised features, the standardisation folded
    into the kernel and bias so the head reads the raw pooled features."""
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    with warnings.catch_warnings():  # lbfgs may stop at max_iter at the weakest C: still usable
        warnings.simplefilter("ignore")
        fit = LogisticRegression(C=c, max_iter=500).fit((features - mean) / scale, labels)
    kernel = (fit.coef_ / scale).T  # [F, classes]
    bias = fit.intercept_ - (fit.coef_ * (mean / scale)).sum(axis=1)
    return Linear(kernel.astype(np.float32), bias.astype(np.float32))


def calibrated_joint_head(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], c: float
) -> Linear:
    """The joint regression at ``c`` on train features, scaled by its own temperature on val:
    the half of the blend ``choose_head`` fits (and ``unblend`` fits again to take away)."""
    joint = fit_joint_head(*train, c)
    return joint.scaled(1 / fit_temperature(joint(val[0]), val[1]))


def pooled_features(model: Any) -> Any:
    """features(x [N, H, W, 3]) -> the pooled features the head reads, [N, F]."""
    import keras

    pooled = keras.Model(model.inputs, model.get_layer("gap").output)

    def features(x: np.ndarray) -> np.ndarray:
        return np.asarray(pooled.predict(x.astype(np.float32), batch_size=128, verbose=0))

    return features


def val_scores(logits: np.ndarray, labels: np.ndarray, prior: np.ndarray) -> dict[str, float]:
    """What ``finalise`` would make of these logits on val: BMA, macro AUC and melanoma
    specificity at the chosen logit adjustment."""
    adjustment = fit_logit_adjustment(logits, labels, prior, MEL)
    row = next(r for r in adjustment.table if r["tau"] == adjustment.tau)
    return {
        "tau": adjustment.tau,
        "bma": float(row["bma"]),
        "macro_auc": float(row["macro_auc"]),
        "mel_specificity": float(row.get("mel_specificity", float("nan"))),
    }


def flip_views(images: np.ndarray) -> tuple[np.ndarray, ...]:
    """The images [N, H, W, 3] and their left-right, up-down and both-ways flips: a lesion
    seen through a dermatoscope has no up or left."""
    return (images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1])


def choose_head(
    members: Linear,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    grid: tuple[float, ...] = C_GRID,
) -> tuple[Linear, dict[str, Any]]:
    """The blended head with the best val BMA over ``grid``, and the table it was chosen from
    (the members' head alone is its first row)."""
    (_, y_train), (f_val, y_val) = train, val
    prior = class_prior(y_train, len(HAM10000_LABELS))
    own = members(f_val)
    calibrated = members.scaled(1 / fit_temperature(own, y_val))
    table: list[dict[str, Any]] = [{"c": None, **val_scores(own, y_val, prior)}]
    heads = []
    for c in grid:
        joint = calibrated_joint_head(train, val, c)
        head = blend(calibrated, joint, MEMBERS_SHARE)
        table.append({"c": c, **val_scores(head(f_val), y_val, prior)})
        heads.append(head)
        log.info("C=%g: val %s", c, table[-1])
    # max() keeps the first of equals: the strongest regularisation among ties
    chosen, head = max(zip(table[1:], heads, strict=True), key=lambda pair: pair[0]["bma"])
    return head, {
        "kind": "blend of the members' mean head and a joint logistic regression",
        "members_share": MEMBERS_SHARE,
        "c": chosen["c"],
        "val": table,
    }


def refit_head(
    model_path: Path,
    images: Path,
    out: Path | None = None,
    split_csv: Path | None = None,
    flips: bool = False,
) -> dict[str, object]:
    """Replace an ensemble HDF5's head by the blended joint head, then calibrate as usual.

    ``flips``: fit the regression on the train images and their three flips (``flip_views``),
    a lever measured on val and not kept (the card's table of it).
    """
    from training.data import load_split_arrays, part_labels
    from training.ensemble import KEPT, raw_model
    from training.split import SPLIT_CSV, read_split
    from training.train import finalise

    model, summary, size = raw_model(model_path)
    if summary.get("head"):
        raise ValueError(f"{model_path} already has a fitted head; start from the members' one")
    rows = read_split(split_csv or SPLIT_CSV)
    cache = split_csv is None  # the cache is keyed by the committed split's sizes
    features = pooled_features(model)
    x_val, y_val = load_split_arrays(images, rows, "val", size, cache=cache)
    x_train, y_train = load_split_arrays(images, rows, "train", size, cache=cache)
    f_val = features(x_val)
    # one view at a time: four float copies of the train split at once need ~10 GB
    views = flip_views(x_train) if flips else (x_train,)
    f_train = np.concatenate([features(view) for view in views])
    y_train = np.tile(y_train, len(views))
    dense = model.get_layer("logits")
    members = Linear(*dense.get_weights())
    head, record = choose_head(members, (f_train, y_train), (f_val, y_val))
    dense.set_weights([head.kernel.astype(np.float32), head.bias.astype(np.float32)])
    record["train_views"] = "the images and their three flips" if flips else "the images"
    record["val_bma_before_calibration"] = balanced_accuracy(
        y_val, head(f_val).argmax(1), len(HAM10000_LABELS)
    )
    kept = {k: v for k, v in summary.items() if k in KEPT}
    return finalise(
        model,
        x_val,
        y_val,
        out or model_path,
        size,
        {**kept, "head": record},
        train_labels=part_labels(rows, "train"),
    )


def unblend(
    model_path: Path,
    reference: Path,
    out: Path,
    images: Path,
    split_csv: Path | None = None,
) -> tuple[list[Path], dict[str, float]]:
    """Member folders again from an ensemble whose head ``refit_head`` blended: the members'
    mean head is only kept inside the blend, so a member whose own folder is lost (v4, trained
    in a session whose ``training/runs`` is gone) can still be weighed against a new one.

    The joint half is fitted again exactly as ``refit_head`` fitted it (same features, same C,
    same val temperature) and taken away, which leaves the members' mean head times an unknown
    factor (``share / T``: its temperature was fitted on the logits being recovered). The factor
    comes from ``reference``, a mean-head ensemble HDF5 that holds some of the same members (same
    name, same backbone weights): their blocks must agree with it up to that one factor, which is
    the check. Returns the folders and the fit (factor, the worst block's residual relative to
    its norm, members paired).
    """
    from training.data import load_split_arrays
    from training.ensemble import raw_model, write_members
    from training.split import SPLIT_CSV, read_split

    model, summary, size = raw_model(model_path)
    record = summary.get("head")
    if not record or record.get("train_views") != "the images":
        raise ValueError(f"{model_path}'s head is not a blend `training head` fitted on the images")
    ref_model, ref_summary, _ = raw_model(reference)
    if ref_summary.get("head"):
        raise ValueError(f"{reference}'s head is not the members' mean")

    rows = read_split(split_csv or SPLIT_CSV)
    cache = split_csv is None
    features = pooled_features(model)
    x_val, y_val = load_split_arrays(images, rows, "val", size, cache=cache)
    x_train, y_train = load_split_arrays(images, rows, "train", size, cache=cache)
    val = (features(x_val), y_val)
    joint = calibrated_joint_head((features(x_train), y_train), val, float(record["c"]))
    kernel, bias = model.get_layer("logits").get_weights()
    share = float(record["members_share"])
    left = Linear(kernel - (1 - share) * joint.kernel, bias - (1 - share) * joint.bias)

    # Pair members with the reference's: the same name and the same backbone weights.
    configs = summary["config"]["members"]
    ref_names = [c["name"] for c in ref_summary["config"]["members"]]
    ref_kernel = ref_model.get_layer("logits").get_weights()[0]
    rows_here, rows_ref = kernel.shape[0] // len(configs), ref_kernel.shape[0] // len(ref_names)
    found, wanted = [], []  # blocks of the mean head: the member's own kernel / member count
    for i, cfg in enumerate(configs):
        if cfg["name"] not in ref_names:
            continue
        j = ref_names.index(cfg["name"])
        mine = model.get_layer(f"backbone_{i}").get_weights()
        theirs = ref_model.get_layer(f"backbone_{j}").get_weights()
        if not all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True)):
            continue
        found.append(left.kernel[i * rows_here : (i + 1) * rows_here])
        own = ref_kernel[j * rows_ref : (j + 1) * rows_ref] * len(ref_names)
        wanted.append(own / len(configs))
    if not found:
        raise ValueError(f"{reference} holds none of {model_path}'s members: no scale to recover")
    a, b = np.concatenate(found), np.concatenate(wanted)
    factor = float((a * b).sum() / (b * b).sum())
    # Relative to the block's norm: the regression fitted again on another CPU's features stops
    # a little elsewhere (about 1 % for the shipped model), which no single weight should decide.
    residual = max(
        float(np.linalg.norm(f / factor - w) / np.linalg.norm(w))
        for f, w in zip(found, wanted, strict=True)
    )
    if residual > MAX_UNBLEND_RESIDUAL:
        raise RuntimeError(
            f"the recovered blocks differ from {reference}'s by {residual:.3f} of their norm: "
            "the blend cannot be undone with these features"
        )
    mean_head = (left.kernel / factor, left.bias / factor)
    folders = write_members(model, summary, mean_head, size, out, images, split_csv, model_path)
    return folders, {"factor": factor, "residual": residual, "paired": float(len(found))}
