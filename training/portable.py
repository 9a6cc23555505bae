"""One training recipe on any Keras 3 backend: TensorFlow on this CPU, PyTorch on a GPU machine.

``python -m training train`` (TensorFlow, tf.data) stays the documented CPU default. This module
is the recipe of issue 17 written with Keras ops only, so the same code trains the expensive
members on a GPU machine that has PyTorch and no TensorFlow, and writes weights that load here:

    python -m training pack -o .carry/ham            # here: the JPEGs + labels, ~32 MB
    KERAS_BACKEND=torch python -m training.portable fleet --data .carry/ham \\
        --weights .carry/weights --plan training/plans/gpu.json --budget-s 400 -o runs/gpu
    python -m training ensemble runs/gpu/<member> ... -o models/skin_lesion.h5   # here

What runs where:
- on the CPU, per batch (``Batches``): class-balanced sampling (every minority image, a fresh
  random subset of nevi each epoch), MixUp or CutMix with soft labels, sample weights, and
  flips, any rotation, zoom and shift (``geometric``);
- inside the training graph, on the accelerator (``augmenter``): brightness, contrast,
  saturation, an illuminant shift (the inverse of colour constancy), dermoscope vignetting and
  synthetic hairs. None of it is part of the saved model;
- once, before the first epoch, with ``"teacher"`` in the member's settings: an ONNX teacher
  answers every train image through onnxruntime (``teacher_probabilities``; this needs
  onnxruntime where the member trains), and its softened probabilities become part of each
  target (``targets``): distillation.

Each member checkpoints every epoch (Keras ``BackupAndRestore`` + its own state file) and picks
up where it stopped with ``--resume``. With ``--budget-s`` the number of epochs is set after the
second epoch from the measured epoch time, so a fixed lease ends with a finished cosine schedule
rather than a killed run.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from app.files import atomic_path, atomic_write
from app.inference.field_of_view import fill_outside
from app.inference.spec import HAM10000_LABELS

log = logging.getLogger(__name__)

NV = HAM10000_LABELS.index("nv")
LABELS_CSV = "labels.csv"
STATE = "state.json"
BEST, LAST = "best.weights.h5", "last.weights.h5"
MEMBER_JSON = "member.json"


@dataclass(frozen=True)
class MemberConfig:
    """One training run. Field names double as the plan file's keys."""

    name: str
    arch: str = "mobilenet_025"
    size: tuple[int, int] = (200, 150)  # (width, height)
    seed: int = 1
    max_epochs: int = 80
    warmup_epochs: int = 2
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.02
    nv_per_epoch: int = 1500
    mix_prob: float = 0.5  # share of batches mixed (half MixUp, half CutMix)
    loss: str = "ce"  # ce | focal
    label_smoothing: float = 0.05
    strong_aug: bool = True  # illuminant shift, vignetting, hairs on top of the geometric ones
    # Distillation (Hinton et al. 2015): an ONNX teacher with this project's metadata (the shipped
    # ensemble) answers every train image once; the target is then this share of its softened
    # probabilities plus the rest of the (smoothed) label.
    teacher: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    limit: int | None = None  # per-part image cap, for smoke tests

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> MemberConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown member settings {sorted(unknown)}; known: {sorted(known)}")
        values = dict(raw)
        if "size" in values:
            values["size"] = tuple(values["size"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


# -- data ---------------------------------------------------------------------------------------


def pack(images: Path, rows: list[dict[str, str]], out: Path, parts: tuple[str, ...]) -> int:
    """Copy the JPEGs of ``parts`` and a labels file into ``out``; returns the image count.

    The copies are byte-identical, so decoding them gives the pixels serving sees.
    """
    chosen = [r for r in rows if r["split"] in parts]
    (out / "images").mkdir(parents=True, exist_ok=True)
    for row in chosen:
        shutil.copyfile(
            images / f"{row['image_id']}.jpg", out / "images" / f"{row['image_id']}.jpg"
        )
    with (out / LABELS_CSV).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image_id", "dx", "split"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("image_id", "dx", "split")} for r in chosen)
    return len(chosen)


def load_part(
    data: Path, part: str, size: tuple[int, int], limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB images (N, H, W, 3), int labels) of one part of a pack.

    Decoded as the server decodes a 200x150 upload (OpenCV straight to RGB); other sizes are an
    INTER_AREA resize of that, as the server's resize_rgb does for the same aspect ratio; and a
    round field of view's black is filled, as the server fills it (app.inference.field_of_view).
    """
    with (data / LABELS_CSV).open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == part][:limit]
    if not rows:
        raise ValueError(f"{data} has no {part!r} images")
    width, height = size
    out = np.empty((len(rows), height, width, 3), np.uint8)
    for i, row in enumerate(rows):
        raw = np.fromfile(data / "images" / f"{row['image_id']}.jpg", np.uint8)
        bgr = cv2.imdecode(raw, cv2.IMREAD_COLOR)  # + cvtColor: any OpenCV, same pixels
        if bgr is None:
            raise ValueError(f"cannot decode {row['image_id']}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if rgb.shape[:2] != (height, width):
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        out[i] = fill_outside(rgb)[0]
    labels = np.array([HAM10000_LABELS.index(r["dx"]) for r in rows], np.int64)
    return out, labels


def class_weights(labels: np.ndarray, nv_per_epoch: int) -> np.ndarray:
    """Square-rooted inverse frequency of the sampled epoch: full inverse frequency over-trusts
    the 85 dermatofibromas."""
    counts = np.bincount(labels, minlength=len(HAM10000_LABELS)).astype(float)
    counts[NV] = min(counts[NV], nv_per_epoch)
    weights = np.sqrt(counts.sum() / (len(counts) * np.maximum(counts, 1)))
    return weights / weights.mean()


def epoch_indices(labels: np.ndarray, nv_per_epoch: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's order: every minority image plus a fresh random subset of nevi, shuffled."""
    nevi = np.flatnonzero(labels == NV)
    keep = rng.choice(nevi, min(nv_per_epoch, len(nevi)), replace=False)
    return rng.permutation(np.concatenate([np.flatnonzero(labels != NV), keep]))


def teacher_probabilities(teacher: Path, images: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities for uint8 RGB ``images`` at its input size, softened.

    The served model's probabilities already carry its calibration temperature (log p is the
    logits over it, less a constant), so dividing log p by ``temperature`` softens them further
    without needing the logits. onnxruntime, not Keras: many times faster on this CPU.
    """
    import onnxruntime as ort
    from scipy.special import softmax

    from app.inference.preprocess import to_model_input
    from app.inference.spec import ModelSpec
    from conversion.runtime import predict_onnx, session

    if not teacher.is_file():
        raise FileNotFoundError(f"no teacher model at {teacher}")
    sess: ort.InferenceSession = session(teacher, threads=os.cpu_count() or 1)
    spec = ModelSpec.from_metadata(sess.get_modelmeta().custom_metadata_map)
    if tuple(spec.labels) != tuple(HAM10000_LABELS):
        raise ValueError(f"teacher {teacher} has classes {spec.labels}, not HAM10000's")
    if images.shape[1:3] != (spec.input_height, spec.input_width):
        raise ValueError(f"teacher {teacher} takes {spec.input_size}, images are {images.shape}")
    blocks = range(0, len(images), 256)  # the whole train part as float32 would take ~2.5 GB
    probs = np.concatenate(
        [
            predict_onnx(sess, np.stack([to_model_input(im, spec) for im in images[i : i + 256]]))
            for i in tqdm(blocks, desc="teacher", unit="block", leave=False)
        ]
    )
    return softmax(np.log(np.clip(probs, 1e-12, 1.0)) / temperature, axis=1).astype(np.float32)


def targets(labels: np.ndarray, cfg: MemberConfig, teacher: np.ndarray | None = None) -> np.ndarray:
    """Each image's training target: its smoothed one-hot label, blended with the teacher's."""
    classes = len(HAM10000_LABELS)
    onehot = np.eye(classes, dtype=np.float32)[labels]
    smoothed = onehot * (1 - cfg.label_smoothing) + cfg.label_smoothing / classes
    if teacher is None:
        return smoothed
    return (1 - cfg.distill_weight) * smoothed + cfg.distill_weight * teacher


def mix_batch(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with its own shuffle.

    ``y`` may hold several target arrays side by side (the label and the training target): each
    column is mixed by the same share."""
    perm = rng.permutation(len(x))
    if rng.random() < 0.5:
        lam = float(rng.beta(0.4, 0.4))
        return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
    height, width = x.shape[1:3]
    lam = float(rng.beta(1.0, 1.0))
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = x.copy()
    mixed[:, top:bottom, left:right] = x[perm, top:bottom, left:right]
    kept = 1 - (bottom - top) * (right - left) / (height * width)
    return mixed, kept * y + (1 - kept) * y[perm]


def geometric(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip, any rotation (lesions have no "up"), zoom 0.9-1.25x and a 5 % shift, per image.

    One OpenCV warp with mirrored borders per image, on the CPU: Keras' RandomRotation and
    RandomZoom with fill_mode="reflect" took 8-9 s per batch of 64 on the PyTorch backend.
    """
    out = np.empty_like(images)
    height, width = images.shape[1:3]
    for i, image in enumerate(images):
        if rng.random() < 0.5:
            image = image[:, ::-1]
        matrix = cv2.getRotationMatrix2D(
            (width / 2, height / 2), float(rng.uniform(0, 360)), float(rng.uniform(0.9, 1.25))
        )
        matrix[:, 2] += rng.uniform(-0.05, 0.05, 2) * (width, height)
        out[i] = cv2.warpAffine(
            np.ascontiguousarray(image),
            matrix,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
    return out


def _py_dataset():  # type: ignore[no-untyped-def]
    import keras

    class Batches(keras.utils.PyDataset):
        """An epoch of every minority image plus a fresh random subset of nevi, mixed."""

        def __init__(
            self, x: np.ndarray, y: np.ndarray, cfg: MemberConfig, target: np.ndarray
        ) -> None:
            super().__init__(workers=2, use_multiprocessing=False, max_queue_size=8)
            self.x, self.y, self.cfg = x, y, cfg
            self.weights = class_weights(y, cfg.nv_per_epoch)
            self.rng = np.random.default_rng(cfg.seed)
            # The label (for the sample weight) and the target (for the loss), side by side.
            onehot = np.eye(len(HAM10000_LABELS), dtype=np.float32)[y]
            self.columns = np.concatenate([onehot, target], axis=1)
            self.on_epoch_end()

        def on_epoch_end(self) -> None:
            self.order = epoch_indices(self.y, self.cfg.nv_per_epoch, self.rng)

        def __len__(self) -> int:
            return max(1, len(self.order) // self.cfg.batch)  # whole batches: mixing pairs

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            idx = self.order[i * self.cfg.batch : (i + 1) * self.cfg.batch]
            rng = np.random.default_rng((self.cfg.seed, int(self.order[0]), i))
            x = geometric(self.x[idx], rng).astype(np.float32)
            columns = self.columns[idx]
            if rng.random() < self.cfg.mix_prob:
                x, columns = mix_batch(x, columns, rng)
            label, target = np.split(columns, 2, axis=1)
            return x, target.astype(np.float32), (label @ self.weights).astype(np.float32)

    return Batches


# -- augmentation inside the graph --------------------------------------------------------------


def hair_bank(size: tuple[int, int], count: int = 48, seed: int = 7) -> np.ndarray:
    """Anti-aliased dark curves, float32 (count, H, W, 1) in [0, 1]: synthetic hairs."""
    width, height = size
    rng = np.random.default_rng(seed)
    bank = np.zeros((count, height, width, 1), np.float32)
    for k in range(count):
        canvas = np.zeros((height * 2, width * 2), np.uint8)  # drawn at 2x, shrunk: thin hairs
        for _ in range(int(rng.integers(1, 6))):
            start = rng.uniform(0, 1, 2) * (width * 2, height * 2)
            bend = rng.uniform(-0.3, 0.3, 2) * (width * 2, height * 2)
            end = start + rng.uniform(-1, 1, 2) * (width * 2, height * 2)
            t = np.linspace(0, 1, 40)[:, None]
            curve = (
                (1 - t) ** 2 * start
                + 2 * (1 - t) * t * (start + end) / 2
                + bend * t * (1 - t)
                + t**2 * end
            )
            cv2.polylines(
                canvas, [curve.astype(np.int32)], False, 255, int(rng.integers(1, 4)), cv2.LINE_AA
            )
        bank[k, :, :, 0] = cv2.resize(canvas, size, interpolation=cv2.INTER_AREA) / 255.0
    return bank


def _layers():  # type: ignore[no-untyped-def]
    import keras
    from keras import ops

    class Illuminant(keras.layers.Layer):
        """Per-image channel gains: the colour cast of another dermoscope or light source."""

        def __init__(self, spread: float = 0.12, seed: int = 0, **kw: object) -> None:
            super().__init__(**kw)
            self.spread, self.gen = spread, keras.random.SeedGenerator(seed)

        def call(self, x, training=False):  # type: ignore[no-untyped-def]
            if not training:
                return x
            n = ops.shape(x)[0]
            gains = keras.random.uniform(
                (n, 1, 1, 3), 1 - self.spread, 1 + self.spread, seed=self.gen
            )
            return ops.clip(x * gains, 0.0, 255.0)

        def compute_output_shape(self, shape):  # type: ignore[no-untyped-def]
            return shape

    class Vignette(keras.layers.Layer):
        """A dark circular rim of random radius on some images, as dermoscopes leave."""

        def __init__(self, size: tuple[int, int], p: float = 0.3, seed: int = 0, **kw: object):
            super().__init__(**kw)
            width, height = size
            yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
            r = np.hypot((xx - width / 2) / (width / 2), (yy - height / 2) / (height / 2))
            self.radius = r[None, :, :, None]
            self.p, self.gen = p, keras.random.SeedGenerator(seed)

        def call(self, x, training=False):  # type: ignore[no-untyped-def]
            if not training:
                return x
            n = ops.shape(x)[0]
            edge = keras.random.uniform((n, 1, 1, 1), 0.85, 1.3, seed=self.gen)
            on = ops.cast(keras.random.uniform((n, 1, 1, 1), seed=self.gen) < self.p, x.dtype)
            rim = ops.sigmoid((ops.convert_to_tensor(self.radius) - edge) / 0.04)
            return x * (1 - on * rim)

        def compute_output_shape(self, shape):  # type: ignore[no-untyped-def]
            return shape

    class Hairs(keras.layers.Layer):
        """Dark synthetic hairs from a fixed bank on some images."""

        def __init__(self, size: tuple[int, int], p: float = 0.3, seed: int = 0, **kw: object):
            super().__init__(**kw)
            self.bank = hair_bank(size)
            self.p, self.gen = p, keras.random.SeedGenerator(seed)

        def call(self, x, training=False):  # type: ignore[no-untyped-def]
            if not training:
                return x
            n = ops.shape(x)[0]
            pick = keras.random.randint((n,), 0, len(self.bank), seed=self.gen)
            mask = ops.take(ops.convert_to_tensor(self.bank), pick, axis=0)
            on = ops.cast(keras.random.uniform((n, 1, 1, 1), seed=self.gen) < self.p, x.dtype)
            colour = keras.random.uniform((n, 1, 1, 3), 10.0, 70.0, seed=self.gen)
            mask = mask * on
            return x * (1 - mask) + mask * colour

        def compute_output_shape(self, shape):  # type: ignore[no-untyped-def]
            return shape

    return Illuminant, Vignette, Hairs


def augmenter(cfg: MemberConfig):  # type: ignore[no-untyped-def]
    import keras
    from keras import layers

    Illuminant, Vignette, Hairs = _layers()
    seed = cfg.seed
    steps = [
        layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 4),
        layers.RandomContrast(0.15, value_range=(0, 255), seed=seed + 5),
        layers.RandomSaturation((0.35, 0.65), value_range=(0, 255), seed=seed + 6),
    ]
    if cfg.strong_aug:
        steps += [
            Illuminant(seed=seed + 7),
            Vignette(cfg.size, seed=seed + 8),
            Hairs(cfg.size, seed=seed + 9),
        ]
    return keras.Sequential(steps, name="augment")


# -- training -----------------------------------------------------------------------------------


def _save_weights(model: Any, path: Path) -> None:
    """``model.save_weights`` replacing ``path`` whole (Keras wants the .weights.h5 suffix, so
    the temporary name keeps it)."""
    partial = path.with_name(f".partial.{path.name}")
    model.save_weights(partial)
    os.replace(partial, path)


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as partial, partial.open("wb") as fh:
        np.save(fh, array)


def warmup_cosine(peak: float, step: int, warm_steps: int, total_steps: int) -> float:
    """The learning rate at ``step``: linear warm-up to ``peak``, then cosine down to 1 % of it
    at ``total_steps``."""
    total_steps = max(total_steps, warm_steps + 1)
    if step < warm_steps:
        return peak * (step + 1) / warm_steps
    done = (step - warm_steps) / (total_steps - warm_steps)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * done)))


def _callbacks(
    cfg: MemberConfig,
    out: Path,
    x_val: np.ndarray,
    y_val: np.ndarray,
    model,
    steps: int,
    budget_s: float | None,
):  # type: ignore[no-untyped-def]
    import keras

    from conversion.metrics import balanced_accuracy
    from training.models import logits_model

    logits_of = logits_model(model)
    state_path = out / STATE

    class Recipe(keras.callbacks.Callback):
        """Warm-up then cosine learning rate per step; val BMA per epoch; best and last weights.

        Its state (best BMA, the epoch count fixed from the budget, history) is saved beside the
        Keras backup each epoch, so a resumed run continues the same schedule.
        """

        def __init__(self) -> None:
            super().__init__()
            self.state: dict = (
                json.loads(state_path.read_text())
                if state_path.is_file()
                else {"best_bma": -1.0, "epochs": cfg.max_epochs, "history": [], "seconds": 0.0}
            )
            self.started = time.perf_counter() - self.state["seconds"]

        def on_train_batch_begin(self, batch: int, logs=None) -> None:  # type: ignore[no-untyped-def]
            step, total = self.epoch * steps + batch, self.state["epochs"] * steps
            lr = warmup_cosine(cfg.lr, step, cfg.warmup_epochs * steps, total)
            self.model.optimizer.learning_rate.assign(lr)

        def on_epoch_begin(self, epoch: int, logs=None) -> None:  # type: ignore[no-untyped-def]
            self.epoch = epoch
            self.epoch_started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs=None) -> None:  # type: ignore[no-untyped-def]
            logits = logits_of.predict(x_val.astype(np.float32), batch_size=256, verbose=0)
            bma = balanced_accuracy(y_val, logits.argmax(1), len(HAM10000_LABELS))
            elapsed = time.perf_counter() - self.started
            self.state["history"].append(
                {
                    "epoch": epoch + 1,
                    "loss": float((logs or {}).get("loss", float("nan"))),
                    "val_bma": bma,
                    "seconds": round(elapsed, 1),
                }
            )
            if budget_s and epoch + 1 == cfg.warmup_epochs:  # fix the schedule's length once
                per_epoch = time.perf_counter() - self.epoch_started
                fits = epoch + 1 + int((budget_s - elapsed) / (per_epoch * 1.05))
                self.state["epochs"] = max(cfg.warmup_epochs + 1, min(cfg.max_epochs, fits))
                log.info("%s: %.1f s/epoch -> %d epochs", cfg.name, per_epoch, self.state["epochs"])
            # Every file is replaced whole: a member killed mid-write (preempted, or the test
            # that kills one) resumes from the last complete epoch, never a torn file.
            if bma > self.state["best_bma"]:
                self.state["best_bma"] = bma
                _save_weights(model, out / BEST)
                _save_array(out / "val_logits_best.npy", logits)
            _save_weights(model, out / LAST)
            _save_array(out / "val_logits_last.npy", logits)
            self.state["seconds"] = elapsed
            atomic_write(state_path, json.dumps(self.state))
            log.info(
                "%s epoch %d/%d: loss %.4f val BMA %.4f (%.0f s)",
                cfg.name,
                epoch + 1,
                self.state["epochs"],
                self.state["history"][-1]["loss"],
                bma,
                elapsed,
            )
            if epoch + 1 >= self.state["epochs"]:
                self.model.stop_training = True

    return [
        # Keras writes its backup in place; with two kept, a torn latest falls back to the one
        # before it (the epoch is then trained again: history may hold it twice).
        keras.callbacks.BackupAndRestore(
            str(out / "backup"), delete_checkpoint=False, double_checkpoint=True
        ),
        Recipe(),
    ]


def train_member(
    cfg: MemberConfig,
    data: Path,
    weights: Path | None,
    out: Path,
    budget_s: float | None = None,
    resume: bool = False,
) -> dict[str, object]:
    """Train one member; writes best/last weights, val logits and member.json into ``out``."""
    import keras

    from training.models import build_model

    if out.exists() and not resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    x_train, y_train = load_part(data, "train", cfg.size, cfg.limit)
    x_val, y_val = load_part(data, "val", cfg.size, cfg.limit)
    model = build_model(cfg.arch, cfg.size, weights)
    trainer = keras.Sequential([keras.Input(x_train.shape[1:]), augmenter(cfg), model])
    loss = (
        keras.losses.CategoricalFocalCrossentropy(gamma=2.0)
        if cfg.loss == "focal"
        else keras.losses.CategoricalCrossentropy()
    )
    trainer.compile(
        optimizer=keras.optimizers.AdamW(cfg.lr, weight_decay=cfg.weight_decay), loss=loss
    )
    teacher = (
        teacher_probabilities(Path(cfg.teacher), x_train, cfg.distill_temperature)
        if cfg.teacher
        else None
    )
    batches = _py_dataset()(x_train, y_train, cfg, targets(y_train, cfg, teacher))
    started = time.perf_counter()
    trainer.fit(
        batches,
        epochs=cfg.max_epochs,
        verbose=0,
        callbacks=_callbacks(cfg, out, x_val, y_val, model, len(batches), budget_s),
    )
    state = json.loads((out / STATE).read_text())
    summary = {
        "config": asdict(cfg),
        "backend": keras.backend.backend(),
        "best_val_bma": state["best_bma"],
        "epochs": state["epochs"],
        "history": state["history"],
        "minutes_this_run": (time.perf_counter() - started) / 60,
    }
    (out / MEMBER_JSON).write_text(json.dumps(summary, indent=1))
    return summary


def fleet(
    plan: list[MemberConfig],
    data: Path,
    weights: Path | None,
    out: Path,
    budget_s: float | None,
    resume: bool,
) -> list[dict[str, object]]:
    """Train the plan's members at once, one process each (small models leave a GPU idle)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    for cfg in plan:
        cmd = [
            sys.executable,
            "-m",
            "training.portable",
            "member",
            "--data",
            str(data),
            "--out",
            str(out / cfg.name),
            "--config",
            json.dumps(asdict(cfg)),
        ]
        if weights is not None:
            cmd += ["--weights", str(weights)]
        if budget_s:
            cmd += ["--budget-s", str(budget_s)]
        if resume:
            cmd.append("--resume")
        log_file = (out / f"{cfg.name}.log").open("w")
        procs.append(
            (cfg, subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env))
        )
    results = []
    for cfg, proc in procs:
        code = proc.wait()
        member = out / cfg.name / MEMBER_JSON
        result = json.loads(member.read_text()) if member.is_file() else {"config": asdict(cfg)}
        result["exit_code"] = code
        results.append(result)
        log.info("%s: exit %d, best val BMA %s", cfg.name, code, result.get("best_val_bma"))
    (out / "fleet.json").write_text(json.dumps(results, indent=1))
    return results


def read_plan(path: Path) -> list[MemberConfig]:
    raw = json.loads(path.read_text())
    defaults = raw.get("defaults", {})
    return [MemberConfig.from_dict({**defaults, **m}) for m in raw["members"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.portable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("member", "fleet"):
        p = sub.add_parser(name)
        p.add_argument(
            "--data", type=Path, required=True, help="a folder `python -m training pack` wrote"
        )
        p.add_argument(
            "--weights", type=Path, default=None, help="ImageNet backbones (none: from scratch)"
        )
        p.add_argument("--out", "-o", type=Path, required=True)
        p.add_argument("--budget-s", type=float, default=None, help="wall-clock seconds per member")
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        p.add_argument("--limit", type=int, default=None, help="images per part (smoke tests)")
    sub.choices["member"].add_argument("--config", required=True, help="MemberConfig as JSON")
    sub.choices["fleet"].add_argument("--plan", type=Path, required=True, help="plan JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:  # a fixed input size: let cuDNN pick its fastest kernels
        import torch

        torch.backends.cudnn.benchmark = True
        torch.set_num_threads(1)
    except ImportError:
        pass
    cv2.setNumThreads(1)
    if args.command == "member":
        cfg = MemberConfig.from_dict(json.loads(args.config))
        if args.limit:
            cfg = MemberConfig.from_dict({**asdict(cfg), "limit": args.limit})
        summary = train_member(cfg, args.data, args.weights, args.out, args.budget_s, args.resume)
        print(json.dumps({k: summary[k] for k in ("best_val_bma", "epochs", "backend")}))
        return 0
    plan = read_plan(args.plan)
    if args.limit:
        plan = [MemberConfig.from_dict({**asdict(c), "limit": args.limit}) for c in plan]
    results = fleet(plan, args.data, args.weights, args.out, args.budget_s, args.resume)
    for r in results:
        print(r["config"]["name"], r.get("exit_code"), r.get("best_val_bma"), r.get("epochs"))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
