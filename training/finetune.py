"""Fine-tune the ensemble's top blocks on cached activations of augmented train images.

The members stopped after 17-18 of their 60 planned epochs (a 5-minute GPU budget), and a full
retrain does not fit on a 2-core CPU. The top of each MobileNetV2 member (blocks 13-16 and the
1x1 ``Conv_1``, at stride 32) is about a tenth of its cost per image, so it can be trained here:

1. the frozen bottom (up to ``block_12_add``, stride 16) runs once over ``views`` pictures of
   every train image (the image itself, then the members' own augmentation: flips, any rotation,
   zoom, shift, colour, illuminant, vignette, hairs), and its activations are cached as float16;
2. the three tops and the shared Dense head are trained together on them, each epoch drawing one
   view per image, with the members' recipe (nevi subsampled, square-root class weights, label
   smoothing, AdamW, warm-up then cosine). BatchNorm statistics stay frozen;
3. the epoch is chosen on **val** by class-balanced cross-entropy (the mean over classes of each
   class's mean negative log-likelihood): a proper score that weighs the seven classes as the
   balanced metrics do and moves less than an argmax count on 15 dermatofibromas;
4. the full model (the fine-tuned layers are the same objects) is calibrated by ``finalise``.

Every stage resumes: a view already cached is not computed again, and ``--resume`` continues
from the last complete epoch (with a fresh optimiser state at the same point of the schedule).

    python -m training finetune models/skin_lesion.h5 -o /tmp/finetuned.h5 --resume
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.files import atomic_write
from app.inference.spec import HAM10000_LABELS
from conversion.metrics import balanced_accuracy
from training.calibration import class_prior
from training.head import val_scores
from training.portable import class_weights, epoch_indices, geometric, warmup_cosine

log = logging.getLogger(__name__)

CUT = "block_12_add"  # the last stride-16 activation of MobileNetV2; the top starts after it
STATE = "state.json"
BEST, LAST = "best.weights.h5", "last.weights.h5"


@dataclass(frozen=True)
class FinetuneConfig:
    views: int = 8  # the image itself and views - 1 augmented pictures of it
    epochs: int = 30
    warmup_epochs: int = 1
    batch: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.02
    nv_per_epoch: int = 1500
    label_smoothing: float = 0.05
    seed: int = 17


def balanced_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """The mean over the classes present of each class's mean negative log-likelihood."""
    from scipy.special import log_softmax

    nll = -log_softmax(logits, axis=1)[np.arange(len(labels)), labels]
    return float(np.mean([nll[labels == c].mean() for c in np.unique(labels)]))


def split_members(model: Any) -> tuple[list[Any], list[Any]]:
    """(bottoms, tops): each member's backbone cut at ``CUT``. The tops share their layers with
    ``model``, so training them trains it."""
    import keras

    bottoms, tops = [], []
    for layer in model.layers:
        if not layer.name.startswith("backbone_"):
            continue
        cut = layer.get_layer(CUT).output
        bottoms.append(keras.Model(layer.input, cut, name=f"bottom_{len(bottoms)}"))
        tops.append(keras.Model(cut, layer.output, name=f"top_{len(tops)}"))
    if not tops:
        raise ValueError("no backbone_<i> members in this model: is it an assembled ensemble?")
    return bottoms, tops


def top_model(model: Any, tops: list[Any]) -> Any:
    """The members' cut activations (one input each) -> raw logits, through the tops and the
    model's own pooling, dropout and Dense head."""
    import keras

    inputs = [keras.Input(top.input.shape[1:], name=f"cut_{i}") for i, top in enumerate(tops)]
    maps = [top(x) for top, x in zip(tops, inputs, strict=True)]
    merged = model.get_layer("members")(maps) if len(maps) > 1 else maps[0]
    pooled = model.get_layer("dropout")(model.get_layer("gap")(merged))
    return keras.Model(inputs, model.get_layer("logits")(pooled), name="top_ensemble")


def per_member(cuts: np.ndarray, widths: list[int]) -> list[np.ndarray]:
    """Cached cuts (the members side by side on the channel axis) -> one array per member."""
    starts = np.cumsum([0, *widths])
    return [cuts[..., a:b] for a, b in itertools.pairwise(starts)]


def freeze_batch_norm(tops: list[Any]) -> None:
    """BatchNorm runs on its learnt statistics: a batch of one view per image is not the
    population the bottoms were trained on, and frozen layers below did not change."""
    import keras

    for top in tops:
        for layer in top.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def cache_cuts(
    bottoms: list[Any], images: np.ndarray, path: Path, augment: Any | None, seed: int
) -> np.ndarray:
    """The bottoms' activations for one view of ``images`` (float16 [N, h, w, sum of widths]),
    read from ``path`` when it is there. ``augment`` None: the images as they are."""
    if path.is_file():
        return np.load(path, mmap_mode="r")
    rng = np.random.default_rng(seed)
    parts = []
    for start in tqdm(range(0, len(images), 256), desc=path.stem, unit="batch"):
        x = images[start : start + 256]
        if augment is not None:
            x = np.asarray(augment(geometric(x, rng).astype(np.float32), training=True))
        x = x.astype(np.float32) / 127.5 - 1.0  # the ensemble's own Rescaling layer
        parts.append(
            np.concatenate([b.predict(x, batch_size=128, verbose=0) for b in bottoms], axis=-1)
        )
    cuts = np.concatenate(parts).astype(np.float16)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, cuts)
    tmp.replace(path)  # whole or absent: a killed run computes this view again
    return cuts


def _schedule_class():  # type: ignore[no-untyped-def]
    import keras

    class Schedule(keras.callbacks.Callback):
        """Warm-up then cosine, set per step from the epoch and its step count."""

        def __init__(self, cfg: FinetuneConfig) -> None:
            super().__init__()
            self.cfg, self.epoch, self.steps = cfg, 0, 1

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            cfg, steps = self.cfg, self.steps
            step = self.epoch * steps + batch
            lr = warmup_cosine(cfg.lr, step, cfg.warmup_epochs * steps, cfg.epochs * steps)
            self.model.optimizer.learning_rate.assign(lr)

    return Schedule


def train_tops(
    trainer: Any,
    views: list[np.ndarray],
    y_train: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    cfg: FinetuneConfig,
    work: Path,
    resume: bool,
) -> dict[str, Any]:
    """Train ``trainer`` (cuts -> logits) for ``cfg.epochs``; keep the best epoch by val
    balanced cross-entropy. Returns the state: history, best epoch and figures."""
    import keras

    x_val, y_val = val
    widths = [int(x.shape[-1]) for x in trainer.inputs]
    val_inputs = per_member(x_val, widths)
    state_path = work / STATE
    state: dict[str, Any] = {"best_epoch": 0, "best_bce": math.inf, "history": []}
    if resume and state_path.is_file() and (work / LAST).is_file():
        state = json.loads(state_path.read_text())
        trainer.load_weights(work / LAST)
        log.info("resuming after epoch %d", len(state["history"]))
    prior = class_prior(y_train, len(HAM10000_LABELS))
    weights = class_weights(y_train, cfg.nv_per_epoch)
    classes = len(HAM10000_LABELS)
    targets = np.full((classes, classes), cfg.label_smoothing / classes, np.float32)
    targets[np.diag_indices(classes)] += 1 - cfg.label_smoothing
    trainer.compile(
        optimizer=keras.optimizers.AdamW(cfg.lr, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    schedule = _schedule_class()(cfg)
    started = time.perf_counter()
    for epoch in range(len(state["history"]), cfg.epochs):
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)  # the same epoch on a resume
        order = epoch_indices(y_train, cfg.nv_per_epoch, rng)
        pick = rng.integers(len(views), size=len(order))
        x = np.empty((len(order), *views[0].shape[1:]), np.float32)
        for v, view in enumerate(views):
            chosen = pick == v
            x[chosen] = view[order[chosen]]
        schedule.epoch, schedule.steps = epoch, math.ceil(len(order) / cfg.batch)
        fit = trainer.fit(
            per_member(x, widths),
            targets[y_train[order]],
            sample_weight=weights[y_train[order]],
            batch_size=cfg.batch,
            epochs=1,
            shuffle=False,  # epoch_indices already shuffled it
            verbose=0,
            callbacks=[schedule],
        )
        logits = np.asarray(trainer.predict(val_inputs, batch_size=256, verbose=0))
        row = {
            "epoch": epoch + 1,
            "loss": float(fit.history["loss"][-1]),
            "val_bce": balanced_cross_entropy(logits, y_val),
            "val_bma_raw": balanced_accuracy(y_val, logits.argmax(1), classes),
            **{f"val_{k}": v for k, v in val_scores(logits, y_val, prior).items()},
            "seconds": round(time.perf_counter() - started, 1),
        }
        state["history"].append(row)
        if row["val_bce"] < state["best_bce"]:
            state["best_bce"], state["best_epoch"] = row["val_bce"], epoch + 1
            _save(trainer, work / BEST)
        _save(trainer, work / LAST)
        atomic_write(state_path, json.dumps(state, indent=1))
        log.info(
            "epoch %d/%d: loss %.4f, val balanced CE %.4f, BMA %.3f, AUC %.4f, mel spec %.3f",
            epoch + 1,
            cfg.epochs,
            row["loss"],
            row["val_bce"],
            row["val_bma"],
            row["val_macro_auc"],
            row["val_mel_specificity"],
        )
    return state


def _save(model: Any, path: Path) -> None:
    tmp = path.with_name(path.name.replace(".weights.h5", ".tmp.weights.h5"))
    model.save_weights(tmp)
    tmp.replace(path)


def finetune(
    model_path: Path,
    images: Path,
    out: Path,
    work: Path,
    cfg: FinetuneConfig = FinetuneConfig(),
    split_csv: Path | None = None,
    resume: bool = False,
) -> dict[str, object]:
    """Fine-tune ``model_path``'s tops (see the module doc), then calibrate and write ``out``."""
    import keras

    from training.data import load_split_arrays, part_labels
    from training.ensemble import KEPT, raw_model
    from training.models import logits_model
    from training.portable import MemberConfig, augmenter
    from training.split import SPLIT_CSV, read_split
    from training.train import finalise

    keras.utils.set_random_seed(cfg.seed)
    model, summary, size = raw_model(model_path)
    rows = read_split(split_csv or SPLIT_CSV)
    cache = split_csv is None
    x_train, y_train = load_split_arrays(images, rows, "train", size, cache=cache)
    x_val, y_val = load_split_arrays(images, rows, "val", size, cache=cache)
    work.mkdir(parents=True, exist_ok=True)
    bottoms, tops = split_members(model)
    augment = augmenter(MemberConfig(name="finetune", size=size, seed=cfg.seed))
    views = [
        cache_cuts(bottoms, x_train, work / f"train_view{v}.npy", augment if v else None, v)
        for v in range(cfg.views)
    ]
    val_cuts = np.asarray(cache_cuts(bottoms, x_val, work / "val.npy", None, 0), np.float32)
    freeze_batch_norm(tops)
    trainer = top_model(model, tops)
    val_inputs = per_member(val_cuts, [int(x.shape[-1]) for x in trainer.inputs])
    before = np.asarray(trainer.predict(val_inputs, batch_size=256, verbose=0))
    prior = class_prior(y_train, len(HAM10000_LABELS))
    state = train_tops(trainer, views, y_train, (val_cuts, y_val), cfg, work, resume)
    trainer.load_weights(work / BEST)
    # The trainer's layers are the model's: the whole model must now give the trainer's logits.
    whole = logits_model(model).predict(x_val[:32].astype(np.float32), verbose=0)
    mine = trainer.predict([x[:32] for x in val_inputs], verbose=0)
    diff = float(np.abs(whole - mine).max())
    if diff > 0.05:  # float16 cuts against float32 activations
        raise RuntimeError(f"the fine-tuned model is not its trained top (max diff {diff})")
    record = {
        "config": asdict(cfg),
        "cut": CUT,
        "criterion": "val balanced cross-entropy",
        "best_epoch": state["best_epoch"],
        "before": {
            "val_bce": balanced_cross_entropy(before, y_val),
            **{f"val_{k}": v for k, v in val_scores(before, y_val, prior).items()},
        },
        "history": state["history"],
    }
    kept = {k: v for k, v in summary.items() if k in KEPT}
    return finalise(
        model,
        x_val,
        y_val,
        out,
        size,
        {**kept, "finetune": record},
        train_labels=part_labels(rows, "train"),
    )
