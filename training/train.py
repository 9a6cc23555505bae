"""Fine-tune, calibrate and save a HAM10000 classifier as Keras HDF5."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from app.inference.spec import HAM10000_LABELS, HAM10000_NAMES
from conversion.metrics import balanced_accuracy
from training.calibration import (
    class_prior,
    expected_calibration_error,
    fit_logit_adjustment,
    fit_temperature,
    sensitivity_specificity,
    softmax,
    threshold_for_sensitivity,
)
from training.data import SOURCE_SIZE, load_split_arrays
from training.portable import class_weights, epoch_indices
from training.split import SPLIT_CSV, read_split

log = logging.getLogger(__name__)
MEL = HAM10000_LABELS.index("mel")
SPEC_ATTR = "skinlesion_spec"  # HDF5 root attribute the conversion pipeline reads
TRAINING_DATA = "HAM10000 (Tschandl et al. 2018, doi:10.7910/DVN/DBW86T), lesion-level split"
DATA_LICENSE = "CC BY-NC-SA 4.0 (weights: non-commercial use only)"


@dataclass(frozen=True)
class TrainConfig:
    images: Path
    out: Path
    arch: str = "mobilenetv2_035"
    size: tuple[int, int] = (160, 120)
    epochs: int = 12
    warmup_epochs: int = 1
    batch: int = 32
    lr: float = 1e-3
    finetune_lr: float = 5e-4
    seed: int = 42
    weights: Path | None = None
    split_csv: Path = SPLIT_CSV
    nv_per_epoch: int = 1500  # balanced sampling: a fresh random nv subset each epoch
    mel_sensitivity: float = 0.85
    limit: int | None = None  # per-part image cap, for smoke tests
    degrade: bool = False  # JPEG re-compression and down/up-scaling, like real uploads
    cache: bool = True


def seed_everything(seed: int) -> None:
    import tensorflow as tf

    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


def _augmenter(size: tuple[int, int]):  # type: ignore[no-untyped-def]
    import keras
    import tensorflow as tf

    geometric = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical"),
            keras.layers.RandomRotation(0.5, fill_mode="reflect"),  # lesions have no "up"
            keras.layers.RandomZoom((-0.15, 0.05), fill_mode="reflect"),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="reflect"),
        ]
    )

    def augment(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(images, tf.float32) / 255.0
        x = geometric(x, training=True)
        x = tf.image.random_brightness(x, 0.1)
        x = tf.image.random_contrast(x, 0.85, 1.15)
        x = tf.image.random_saturation(x, 0.85, 1.15)
        x = tf.image.random_hue(x, 0.03)
        return tf.clip_by_value(x, 0.0, 1.0) * 255.0, labels

    return augment


def _degrader(size: tuple[int, int]):  # type: ignore[no-untyped-def]
    """Per-image degradations: uploads are re-encoded and resampled unlike the dataset copies."""
    import tensorflow as tf

    width, height = size

    def degrade(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.cond(
            tf.random.uniform(()) < 0.5,
            lambda: tf.image.random_jpeg_quality(image, 60, 95),
            lambda: image,
        )
        scale = tf.random.uniform((), 0.6, 1.0)
        small = tf.cast(tf.round(tf.constant([height, width], tf.float32) * scale), tf.int32)
        resampled = tf.image.resize(tf.image.resize(image, small, "area"), (height, width))
        image = tf.cond(
            tf.random.uniform(()) < 0.3,
            lambda: tf.cast(tf.clip_by_value(tf.round(resampled), 0, 255), tf.uint8),
            lambda: image,
        )
        return image, label

    return degrade


def train(cfg: TrainConfig) -> dict[str, object]:
    """Train, pick the best epoch by val BMA, calibrate on val and save ``cfg.out`` (.h5)."""
    import keras
    import tensorflow as tf
    from tqdm.keras import TqdmCallback

    from training.models import build_model

    seed_everything(cfg.seed)
    rows = read_split(cfg.split_csv)
    if cfg.limit:
        limited: list[dict[str, str]] = []
        for part in ("train", "val"):
            part_rows = [r for r in rows if r["split"] == part]
            limited += part_rows[: cfg.limit]
        rows = limited
    cache = cfg.cache and not cfg.limit
    x_train, y_train = load_split_arrays(cfg.images, rows, "train", cfg.size, cache)
    x_val, y_val = load_split_arrays(cfg.images, rows, "val", cfg.size, cache)

    model = build_model(cfg.arch, cfg.size, cfg.weights)
    augment = _augmenter(cfg.size)
    rng = np.random.default_rng(cfg.seed)
    class_weight = dict(enumerate(class_weights(y_train, cfg.nv_per_epoch).tolist()))
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = cfg.out.with_suffix(".best.weights.h5")
    history: list[dict[str, float]] = []
    best_bma = -1.0

    def dataset(epoch_idx: np.ndarray) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((x_train[epoch_idx], y_train[epoch_idx]))
        if cfg.degrade:
            ds = ds.map(_degrader(cfg.size), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(cfg.batch).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(2)

    total_epochs = cfg.warmup_epochs + cfg.epochs
    n_nv = int((y_train == HAM10000_LABELS.index("nv")).sum())
    per_epoch = len(y_train) - n_nv + min(n_nv, cfg.nv_per_epoch)
    steps = int(np.ceil(per_epoch / cfg.batch))
    schedule = keras.optimizers.schedules.CosineDecay(
        cfg.finetune_lr, decay_steps=max(1, steps * cfg.epochs), alpha=0.02
    )
    started = time.perf_counter()
    for epoch in range(total_epochs):
        warmup = epoch < cfg.warmup_epochs
        backbone = model.get_layer("backbone") if cfg.arch != "small_cnn" else None
        if backbone is not None and epoch in (0, cfg.warmup_epochs):
            # Train the new head on frozen ImageNet features first, then everything.
            backbone.trainable = not warmup
            model.compile(
                optimizer=keras.optimizers.AdamW(cfg.lr if warmup else schedule, weight_decay=1e-4),
                loss="sparse_categorical_crossentropy",
            )
        elif epoch == 0:
            model.compile(
                optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                loss="sparse_categorical_crossentropy",
            )
        idx = epoch_indices(y_train, cfg.nv_per_epoch, rng)
        fit = model.fit(
            dataset(idx),
            epochs=1,
            class_weight=class_weight,
            verbose=0,
            callbacks=[TqdmCallback(verbose=1, desc=f"epoch {epoch + 1}/{total_epochs}")],
        )
        val_probs = model.predict(x_val.astype(np.float32), batch_size=128, verbose=0)
        bma = balanced_accuracy(y_val, val_probs.argmax(1), len(HAM10000_LABELS))
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(fit.history["loss"][-1]),
                "val_bma": bma,
                "minutes": (time.perf_counter() - started) / 60,
            }
        )
        log.info("epoch %d: loss %.4f val BMA %.4f", epoch + 1, history[-1]["loss"], bma)
        if bma > best_bma:
            best_bma = bma
            model.save_weights(checkpoint)
    model.load_weights(checkpoint)
    checkpoint.unlink(missing_ok=True)
    summary: dict[str, object] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "history": history,
        "best_val_bma": best_bma,
        "train_minutes": (time.perf_counter() - started) / 60,
    }
    return finalise(
        model, x_val, y_val, cfg.out, cfg.size, summary, cfg.mel_sensitivity, train_labels=y_train
    )


def finalise(
    model: object,
    x_val: np.ndarray,
    y_val: np.ndarray,
    out: Path,
    size: tuple[int, int],
    summary: dict[str, object],
    mel_sensitivity: float = 0.85,
    train_labels: np.ndarray | None = None,
) -> dict[str, object]:
    """Adjust the logits for the class prior, calibrate on val, set the melanoma threshold, and
    write ``out`` (.h5) with its spec.

    With ``train_labels``, the logit adjustment (``fit_logit_adjustment``: tau chosen on val) is
    added to the Dense ``logits`` bias first; temperature scaling is then fitted on the adjusted
    logits and folded into the same layer; the threshold is the largest melanoma probability
    that keeps ``mel_sensitivity`` on val. Writes ``<out>.training.json`` with ``summary`` and
    the calibration figures.
    """
    from training.models import add_to_logits, fold_temperature, logits_model

    x = x_val.astype(np.float32)
    val_logits = logits_model(model).predict(x, batch_size=128, verbose=0)  # type: ignore[arg-type]
    adjustment = None
    if train_labels is not None:
        prior = class_prior(train_labels, len(HAM10000_LABELS))
        adjustment = fit_logit_adjustment(val_logits, y_val, prior, MEL, mel_sensitivity)
        add_to_logits(model, adjustment.offsets)  # type: ignore[arg-type]
        val_logits = val_logits + adjustment.offsets
    temperature = fit_temperature(val_logits, y_val)
    ece_before = expected_calibration_error(softmax(val_logits, axis=1), y_val)
    fold_temperature(model, temperature)  # type: ignore[arg-type]
    val_probs = model.predict(x, batch_size=128, verbose=0)  # type: ignore[attr-defined]
    ece_after = expected_calibration_error(val_probs, y_val)
    is_mel = y_val == MEL
    mel_threshold = (
        threshold_for_sensitivity(val_probs[:, MEL], is_mel, mel_sensitivity)
        if is_mel.any()
        else 0.5
    )
    mel_sens, mel_spec = sensitivity_specificity(val_probs[:, MEL], is_mel, mel_threshold)

    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)  # type: ignore[attr-defined]  # legacy Keras HDF5: what conversion reads
    summary = {
        **summary,
        "final_val_bma": balanced_accuracy(y_val, val_probs.argmax(1), len(HAM10000_LABELS)),
        "logit_adjustment": adjustment.as_dict() if adjustment else None,
        "temperature": temperature,
        "val_ece_before": ece_before,
        "val_ece_after": ece_after,
        "mel_threshold": mel_threshold,
        "val_mel_sensitivity": mel_sens,
        "val_mel_specificity": mel_spec,
    }
    spec = {
        "name": out.stem,
        "labels": list(HAM10000_LABELS),
        "label_names": [HAM10000_NAMES[c] for c in HAM10000_LABELS],
        "input_width": size[0],
        "input_height": size[1],
        "input_scale": 1.0,
        "input_offset": 0.0,
        "resample_via": list(SOURCE_SIZE),
        "temperature": temperature,
        "logit_adjustment": adjustment.tau if adjustment else None,
        "mel_threshold": mel_threshold,
        "training_data": TRAINING_DATA,
        "license": DATA_LICENSE,
    }
    with h5py.File(out, "a") as fh:
        fh.attrs[SPEC_ATTR] = json.dumps(spec)
    out.with_suffix(".training.json").write_text(json.dumps(summary, indent=2))
    _check_reload(out, model, x_val[:16])
    return summary


def _check_reload(path: Path, model: object, sample: np.ndarray) -> None:
    import keras

    reloaded = keras.models.load_model(path, compile=False)
    a = model.predict(sample.astype(np.float32), verbose=0)  # type: ignore[attr-defined]
    b = reloaded.predict(sample.astype(np.float32), verbose=0)
    if not np.array_equal(a, b):
        raise RuntimeError(f"{path} reloads with different outputs (max diff {abs(a - b).max()})")
