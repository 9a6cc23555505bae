"""Members trained by ``training.portable`` -> one Keras model -> calibrated HDF5.

The members' last feature maps are concatenated and pooled by one Dense layer whose kernel is
the members' kernels stacked and divided by their number, so the logits are exactly the mean of
the members' logits. The result is an ordinary GAP -> Dense head over one feature map: one
``session.run`` serves all members, and the conversion pipeline's class maps, Grad-CAM and the
gate's features treat it like a single model. The members must share an input size and a final
grid (MobileNet-0.25 gives 4x6 at 200x150, MobileNetV2 5x7, so they do not mix).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from app.inference.spec import HAM10000_LABELS
from conversion.metrics import balanced_accuracy
from training.portable import BEST, LAST, MEMBER_JSON


def read_member(folder: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((folder / MEMBER_JSON).read_text())
    return summary


def load_member(folder: Path, checkpoint: str = "best") -> Any:
    """A member as trained: its own backbone and head, with the chosen checkpoint's weights."""
    from training.models import build_model

    cfg = read_member(folder)["config"]
    member = build_model(cfg["arch"], tuple(cfg["size"]), None)
    member.load_weights(folder / (BEST if checkpoint == "best" else LAST))
    return member


def build_ensemble(members: list[Path], checkpoint: str = "best") -> Any:
    """One Keras model averaging the members' logits; softmax output named ``probs``."""
    import keras
    from keras import layers

    configs = [read_member(m)["config"] for m in members]
    sizes = {tuple(c["size"]) for c in configs}
    if len(sizes) != 1:
        raise ValueError(f"members differ in input size: {sorted(sizes)}")
    size: tuple[int, int] = sizes.pop()  # type: ignore[assignment]
    width, height = size
    inputs = keras.Input((height, width, 3), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    maps, kernels, biases = [], [], []
    for i, folder in enumerate(members):
        member = load_member(folder, checkpoint)
        backbone = member.get_layer("backbone")
        backbone.name = f"backbone_{i}"
        maps.append(backbone(x))
        kernel, bias = member.get_layer("logits").get_weights()
        kernels.append(kernel)
        biases.append(bias)
    grids = {tuple(m.shape[1:3]) for m in maps}
    if len(grids) != 1:
        raise ValueError(f"members' feature grids differ: {sorted(grids)}")
    merged = layers.Concatenate(name="members")(maps) if len(maps) > 1 else maps[0]
    pooled = layers.GlobalAveragePooling2D(name="gap")(merged)
    pooled = layers.Dropout(0.2, name="dropout")(pooled)
    dense = layers.Dense(len(HAM10000_LABELS), name="logits")
    logits = dense(pooled)
    outputs = layers.Activation("softmax", name="probs")(logits)
    model = keras.Model(inputs, outputs, name=f"ensemble_{len(members)}")
    dense.set_weights([np.concatenate(kernels) / len(members), np.mean(biases, axis=0)])
    return model


def assemble(
    members: list[Path], out: Path, images: Path, checkpoint: str = "best"
) -> dict[str, object]:
    """Build, check against the members, calibrate on val and write ``out``."""
    from training.data import load_split_arrays, part_labels
    from training.models import logits_model
    from training.split import read_split
    from training.train import finalise

    model = build_ensemble(members, checkpoint)
    summaries = [read_member(m) for m in members]
    size = tuple(summaries[0]["config"]["size"])
    rows = read_split()
    x_val, y_val = load_split_arrays(images, rows, "val", size)  # type: ignore[arg-type]
    logits = logits_model(model).predict(x_val.astype(np.float32), batch_size=128, verbose=0)
    _check_mean_of_members(model, members, checkpoint, x_val[:32])
    archs = sorted({s["config"]["arch"] for s in summaries})
    summary: dict[str, object] = {
        "config": {
            "arch": f"ensemble of {len(members)}: " + ", ".join(archs),
            "size": list(size),
            "checkpoint": checkpoint,
            "members": [s["config"] for s in summaries],
            "backend": summaries[0].get("backend"),
        },
        "history": [],
        "members": [
            {
                "name": s["config"]["name"],
                "best_val_bma": s["best_val_bma"],
                "epochs": s["epochs"],
                "history": s["history"],
            }
            for s in summaries
        ],
        "best_val_bma": balanced_accuracy(y_val, logits.argmax(1), len(HAM10000_LABELS)),
        "train_minutes": round(
            max(s["history"][-1]["seconds"] for s in summaries) / 60, 1
        ),  # in parallel, on the GPU machine
    }
    return finalise(
        model,
        x_val,
        y_val,
        out,
        size,  # type: ignore[arg-type]
        summary,
        train_labels=part_labels(rows, "train"),
    )


def raw_model(model_path: Path) -> tuple[Any, dict[str, Any], tuple[int, int]]:
    """A calibrated HDF5 with its folded temperature and logit adjustment undone: the raw
    logits again. Returns the model, its ``.training.json`` summary and its (width, height)."""
    import h5py
    import keras

    from training.models import add_to_logits, fold_temperature
    from training.train import SPEC_ATTR

    with h5py.File(model_path, "r") as fh:
        spec = json.loads(fh.attrs[SPEC_ATTR])
    summary: dict[str, Any] = json.loads(model_path.with_suffix(".training.json").read_text())
    model = keras.models.load_model(model_path, compile=False)
    fold_temperature(model, 1 / float(spec.get("temperature") or 1.0))  # back to raw logits
    previous = summary.get("logit_adjustment")
    if previous:
        add_to_logits(model, -np.asarray(previous["offsets"], np.float32))
    return model, summary, (int(spec["input_width"]), int(spec["input_height"]))


def unpack(model_path: Path, out: Path, images: Path, split_csv: Path | None = None) -> list[Path]:
    """The members of an ensemble HDF5 whose head is still the members' mean (as ``assemble``
    wrote it, before ``training head``), as member folders ``ensemble`` and ``levers`` read, so
    a member trained later can replace one of them.

    Each member gets its own backbone and its block of the merged kernel times the number of
    members. The merged bias is the mean of the members' biases and cannot be split, so each
    member gets that mean: its logits are its own up to a constant per class, which the
    calibration, the logit adjustment and the head refit after assembly set afresh.
    """
    model, summary, size = raw_model(model_path)
    if summary.get("head"):
        raise ValueError(
            f"{model_path}'s head is not the members' mean ({summary['head']['kind']})"
        )
    kernel, bias = model.get_layer("logits").get_weights()
    return write_members(model, summary, (kernel, bias), size, out, images, split_csv, model_path)


def write_members(
    model: Any,
    summary: dict[str, Any],
    head: tuple[np.ndarray, np.ndarray],
    size: tuple[int, int],
    out: Path,
    images: Path,
    split_csv: Path | None,
    source: Path,
) -> list[Path]:
    """Member folders from an ensemble's backbones and a mean ``head`` (kernel, bias): each
    member gets its block of the kernel times the member count and the (mean) bias, and its val
    logits are saved for ``levers``."""
    from training.data import load_split_arrays
    from training.models import build_model, logits_model
    from training.split import SPLIT_CSV, read_split

    kernel, bias = head
    configs = summary["config"]["members"]
    rows_per_member = kernel.shape[0] // len(configs)
    rows = read_split(split_csv or SPLIT_CSV)
    x_val, _ = load_split_arrays(images, rows, "val", size, cache=split_csv is None)
    folders = []
    for i, (cfg, record) in enumerate(zip(configs, summary["members"], strict=True)):
        member = build_model(cfg["arch"], tuple(cfg["size"]), None)
        member.get_layer("backbone").set_weights(model.get_layer(f"backbone_{i}").get_weights())
        block = kernel[i * rows_per_member : (i + 1) * rows_per_member] * len(configs)
        member.get_layer("logits").set_weights([block, bias])
        folder = out / cfg["name"]
        folder.mkdir(parents=True, exist_ok=True)
        member.save_weights(folder / BEST)
        logits = logits_model(member).predict(x_val.astype(np.float32), batch_size=128, verbose=0)
        np.save(folder / "val_logits_best.npy", logits)
        backend = summary["config"].get("backend")
        unpacked = {"config": cfg, "backend": backend, **record, "unpacked_from": str(source)}
        (folder / MEMBER_JSON).write_text(json.dumps(unpacked, indent=1))
        folders.append(folder)
    return folders


# What a refit carries over from the summary it replaces (finalise writes the rest afresh).
KEPT = ("config", "history", "members", "best_val_bma", "train_minutes", "head")


def readjust(model_path: Path, images: Path, split_csv: Path | None = None) -> dict[str, object]:
    """Refit an already calibrated HDF5's logit adjustment, temperature and melanoma threshold on
    val (the members need not be here): undo its folded temperature and adjustment, then
    ``finalise`` again. Running it twice gives the same file."""
    from training.data import load_split_arrays, part_labels
    from training.split import SPLIT_CSV, read_split
    from training.train import finalise

    model, summary, size = raw_model(model_path)
    rows = read_split(split_csv or SPLIT_CSV)
    x_val, y_val = load_split_arrays(images, rows, "val", size, cache=split_csv is None)
    kept = {k: v for k, v in summary.items() if k in KEPT}
    return finalise(
        model, x_val, y_val, model_path, size, kept, train_labels=part_labels(rows, "train")
    )


def _check_mean_of_members(model: Any, members: list[Path], checkpoint: str, x: np.ndarray) -> None:
    """The merged head must give the mean of the members' own logits (an identity, not a fit)."""
    from training.models import logits_model

    merged = logits_model(model).predict(x.astype(np.float32), verbose=0)
    own = []
    for folder in members:
        member = load_member(folder, checkpoint)
        own.append(logits_model(member).predict(x.astype(np.float32), verbose=0))
    diff = float(np.abs(merged - np.mean(own, axis=0)).max())
    if diff > 1e-3:
        raise RuntimeError(f"the merged model is not the mean of its members (max diff {diff})")


ENSEMBLES = {  # the combinations weighed on val; members must share a grid to be merged
    "3 x MobileNetV2-0.35, GPU members (shipped before v4)": ("v1", "v2", "v3"),
    "2 x MobileNetV2-0.35": ("v1", "v2"),
    "3 x MobileNet-0.25": ("m1", "m2", "m3"),
    # v4: trained later on a CPU with a whole 60-epoch schedule, beside the unpacked v1-v3
    "v4 in place of v1": ("v2", "v3", "v4"),
    "v4 in place of v2": ("v1", "v3", "v4"),
    "v4 in place of v3": ("v1", "v2", "v4"),
    "4 x MobileNetV2-0.35 (over the 6 ms budget)": ("v1", "v2", "v3", "v4"),
    # v5: a second CPU member (training/plans/cpu_v5.json), beside v2-v3 unpacked and v4 unblended
    "v5 in place of v2": ("v3", "v4", "v5"),
    "v5 in place of v3": ("v2", "v4", "v5"),
    "v5 in place of v4": ("v2", "v3", "v5"),
    # v6: a third CPU member, the whole schedule in BF16 math on AMX (training/plans/cpu_v6.json)
    "v6 in place of v2": ("v3", "v4", "v6"),
    "v6 in place of v3": ("v2", "v4", "v6"),
    "v6 in place of v4": ("v2", "v3", "v6"),
    # v7: distilled from the shipped trio (training/plans/cpu_v7.json)
    "v7 in place of v2": ("v3", "v4", "v7"),
    "v7 in place of v3": ("v2", "v4", "v7"),
    "v7 in place of v4": ("v2", "v3", "v7"),
    # v8: one more whole-schedule seed, FP32, v4's recipe (training/plans/cpu_v8.json)
    "v8 in place of v2": ("v3", "v4", "v8"),
    "v8 in place of v3": ("v2", "v4", "v8"),
    "v8 in place of v4": ("v2", "v3", "v8"),
}


def levers(run: Path) -> dict[str, Any]:
    """Val BMA and macro AUC of every member of a fleet run and of the candidate ensembles,
    from the val logits each member saved (no image is decoded again)."""
    from scipy.special import softmax

    from conversion.metrics import macro_ovr_auc
    from training.split import read_split

    labels = np.array([HAM10000_LABELS.index(r["dx"]) for r in read_split() if r["split"] == "val"])

    def scores(logits: np.ndarray) -> dict[str, float]:
        probs = softmax(logits, axis=1)
        return {
            "val_bma": round(balanced_accuracy(labels, probs.argmax(1), len(HAM10000_LABELS)), 4),
            "val_auc": round(macro_ovr_auc(probs, labels) or float("nan"), 4),
        }

    members: dict[str, Any] = {}
    logits: dict[str, np.ndarray] = {}
    for folder in sorted(p for p in run.iterdir() if (p / MEMBER_JSON).is_file()):
        summary = read_member(folder)
        logits[folder.name] = np.load(folder / "val_logits_best.npy")
        if len(logits[folder.name]) != len(labels):
            raise ValueError(f"{folder} was trained on another split or with --limit")
        members[folder.name] = {
            "config": summary["config"],
            "backend": summary.get("backend"),
            "epochs": summary["epochs"],
            "minutes": round(summary["history"][-1]["seconds"] / 60, 1),
            **scores(logits[folder.name]),
        }
    ensembles = {
        name: {"members": list(combo), **scores(np.mean([logits[m] for m in combo], axis=0))}
        for name, combo in ENSEMBLES.items()
        if all(m in logits for m in combo)
    }
    return {"run": run.name, "members": members, "ensembles": ensembles}
