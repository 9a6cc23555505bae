"""``gate``: fit the intended-use gate of a served model and write ``<name>_gate.json``.

1. The served ONNX model gets a second output, ``features``: the pooled backbone features the
   Dense head reads, so the distribution score costs one small matrix product at serving.
   A model without a global-average-pooling -> Dense head (the upstream 28x28 model) keeps
   one output, and its gate runs the quality checks only.
2. On the **train** split: the class means and one shared covariance of the features
   (Ledoit-Wolf shrinkage, since 7 classes x 256 features leave the rare classes thin), and
   the distribution of every quality score.
3. On the **val** split: the distribution threshold at the 99th percentile of in-distribution
   distances (<= 1 % false rejects), and the quality thresholds at far tails of train, checked
   on val.
4. The dev set of non-dermoscopic and degraded images (conversion/devset.py) is scored for
   the record: AUROC of the Mahalanobis and energy scores, and rejection rates per group.

All thresholds are written to the gate file; the server reads them from there.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper
from tqdm import tqdm

from app.inference.gate import (
    FEATURE_BLOCKS_KEY,
    FEATURES,
    GATE_SCHEMA,
    HIGHER_IS_WORSE,
    Block,
    Distribution,
    gate_path,
    measure,
    view_size,
)
from app.inference.preprocess import prepare
from app.inference.spec import ModelSpec
from conversion.cam import find_head
from conversion.errors import ConversionError
from conversion.files import atomic_path, save_onnx, write_text

log = logging.getLogger(__name__)

FALSE_REJECT_TARGET = 0.01  # of val images, for the distribution threshold
# Quality thresholds sit at the far tails of the training images: a real dermoscopic image is
# refused by a quality check about 1 time in 1,000 per check. Refusing more is what the
# distribution check is for.
QUALITY_TAIL = 0.001
QUALITY_MARGIN = 0.5
RIDGE = 1e-3  # of the mean feature variance, added to the shared covariance
BATCH = 64


WIDE_BLOCK = 1024  # features; wider blocks are reduced before whitening (fit_block)
REDUCED_TO = 256
EARLY_BLOCKS = 5  # pooled activations taken from the backbone besides the head's input
MIN_CHANNELS = 32  # thinner early layers carry little beyond colour


def _activations(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """(tensor, channels) of every Relu/Clip activation with a 4-D shape, in graph order."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in inferred.graph.value_info
    }
    channels_axis = 1 if _layout(model) == "NCHW" else 3
    out = []
    for node in model.graph.node:
        shape = shapes.get(node.output[0], [])
        if node.op_type in ("Relu", "Clip") and len(shape) == 4 and shape[channels_axis] > 0:
            out.append((node.output[0], shape[channels_axis]))
    return out


def _layout(model: onnx.ModelProto) -> str:
    meta = {p.key: p.value for p in model.metadata_props}
    return ModelSpec.from_metadata(meta).layout


def add_features_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[list[Any]]]:
    """A copy of ``model`` with ``features`` [N, F] as a second output, and its blocks.

    ``features`` concatenates the global average of a few backbone activations, evenly spaced
    in depth, with the pooled features the Dense head reads. Lee et al. (2018) found such a
    feature ensemble finds far more out-of-distribution inputs than the last layer alone;
    measured here on the dev set, everyday photos went from 61 % to 99 % refused at the same
    false-reject rate. Raises ConversionError when the model has no GAP -> Dense head.
    """
    head = find_head(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if FEATURES in [o.name for o in graph.output]:
        raise ConversionError(f"the model already has a {FEATURES!r} output")
    candidates = [
        a for a in _activations(model) if a[1] >= MIN_CHANNELS and a[0] != head.feature_map
    ]
    picks = sorted({round(i * len(candidates) / EARLY_BLOCKS) for i in range(EARLY_BLOCKS)})
    chosen = [candidates[i] for i in picks if i < len(candidates)]
    nchw = _layout(model) == "NCHW"
    parts: list[str] = []
    blocks: list[list[Any]] = []  # [tensor name, channels]: JSON in the model's metadata
    for i, (tensor, channels) in enumerate(chosen):
        pooled = f"gate_pool_{i}"
        if nchw:
            graph.node.append(helper.make_node("GlobalAveragePool", [tensor], [pooled + "_4d"]))
        else:
            graph.node.append(
                helper.make_node("ReduceMean", [tensor], [pooled + "_4d"], axes=[1, 2], keepdims=1)
            )
        graph.node.append(helper.make_node("Flatten", [pooled + "_4d"], [pooled], axis=1))
        parts.append(pooled)
        blocks.append([tensor, channels])
    parts.append(head.pooled)
    blocks.append([head.pooled, int(head.kernel.shape[0])])
    graph.node.append(helper.make_node("Concat", parts, [FEATURES], axis=1))
    total = sum(c for _, c in blocks)
    graph.output.append(
        helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, ["N", total])
    )
    entry = out.metadata_props.add()
    entry.key, entry.value = FEATURE_BLOCKS_KEY, json.dumps(blocks)
    onnx.checker.check_model(out)
    return out, blocks


def ensure_features(model_path: Path) -> bool:
    """Give the model file its features output (in place, atomically); False if it cannot."""
    model = onnx.load(str(model_path))
    if FEATURES in [o.name for o in model.graph.output]:
        return True
    try:
        with_features, _ = add_features_output(model)
    except ConversionError as exc:
        log.warning("%s: no features output (%s); its gate checks quality only", model_path, exc)
        return False
    save_onnx(with_features, model_path)
    log.info("added the %r output to %s", FEATURES, model_path)
    return True


@dataclass(frozen=True, slots=True)
class Scored:
    """What the gate sees of a set of uploads."""

    quality: dict[str, np.ndarray]  # check -> [N]
    features: np.ndarray | None  # [N, C]
    logits: np.ndarray | None  # [N, classes], rebuilt from the features and the Dense head


class Scorer:
    """Runs uploads through the serving decode, the quality checks and the model."""

    def __init__(self, model_path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self.spec = ModelSpec.from_metadata(meta)
        self.blocks = feature_blocks(meta)
        self.input = self.session.get_inputs()[0].name
        self.has_features = FEATURES in [o.name for o in self.session.get_outputs()]
        self.view = view_size(self.spec)
        model = onnx.load(str(model_path))
        self.head = find_head(model) if self.has_features else None

    def _prepare(self, data: bytes, field_of_view: bool) -> tuple[dict[str, float], np.ndarray]:
        upload = prepare(data, self.spec, field_of_view=field_of_view)
        return measure(upload.rgb, upload.seen_size, self.view, upload.resized), upload.tensor

    def score(
        self,
        uploads: Iterable[bytes],
        total: int | None = None,
        desc: str = "",
        field_of_view: bool = True,
    ) -> Scored:
        """``field_of_view=False``: round fields of view left as sent, unlike the server (only
        to measure what cropping and filling them does)."""
        quality: dict[str, list[float]] = {}
        features: list[np.ndarray] = []
        pending: list[np.ndarray] = []

        def flush() -> None:
            if pending and self.has_features:
                (feats,) = self.session.run([FEATURES], {self.input: np.stack(pending)})
                features.append(feats)
            pending.clear()

        for data in tqdm(uploads, total=total, desc=desc or "gate", unit="img", leave=False):
            scores, tensor = self._prepare(data, field_of_view)
            for name, value in scores.items():
                quality.setdefault(name, []).append(value)
            pending.append(tensor)
            if len(pending) == BATCH:
                flush()
        flush()
        feats = np.concatenate(features) if features else None
        logits = None
        if feats is not None and self.head is not None:
            pooled = feats[:, -self.head.kernel.shape[0] :]  # the head's input is the last block
            logits = pooled @ self.head.kernel + self.head.bias
        return Scored({k: np.asarray(v) for k, v in quality.items()}, feats, logits)


def feature_blocks(meta: dict[str, str]) -> list[tuple[int, int]]:
    """(start, stop) of each block of the ``features`` output, from the model's metadata."""
    sizes = [int(size) for _, size in json.loads(meta.get(FEATURE_BLOCKS_KEY, "[]"))]
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


def fit_block(features: np.ndarray, rows: np.ndarray, classes: int, start: int, stop: int) -> Block:
    """Class means and the shared within-class covariance of one block (Ledoit-Wolf shrunk:
    7 classes and up to 256 features leave the rare classes thin), whitened once.

    A block wider than WIDE_BLOCK (an ensemble's head: 3 x 1280 features) is first projected
    on its REDUCED_TO directions of most within-class variance, so its whitener is [F, k]
    rather than [F, F]. Measured on the 3 x MobileNetV2-0.35 model: the same AUROC against
    the dev set's photos (0.9995) and false rejects (0.59 % of test against 0.66 %) as without
    the head block, where the full 3840 x 3840 whitener took 59 MB and most of the gate's time.
    """
    from sklearn.covariance import LedoitWolf

    x = features[:, start:stop].astype(np.float64)
    means = np.stack([x[rows == c].mean(axis=0) for c in range(classes)])
    centred = x - means[rows]
    projection = None
    if x.shape[1] > WIDE_BLOCK:
        _, _, directions = np.linalg.svd(centred, full_matrices=False)
        projection = directions[:REDUCED_TO].T  # [F, k]
        centred = centred @ projection
    covariance = LedoitWolf(assume_centered=True).fit(centred).covariance_
    # A feature that never fires on the training images has no variance at all: a small
    # ridge keeps the inverse finite (and such a feature firing is itself unusual).
    covariance += (
        np.eye(len(covariance)) * RIDGE * max(float(np.trace(covariance)), 1e-12) / len(covariance)
    )
    whitener = np.linalg.cholesky(np.linalg.inv(covariance))  # precision = W @ W.T
    if projection is not None:
        whitener = projection @ whitener
    probe = Block(start, stop, whitener, means @ whitener, 0.0, 1.0)
    train = probe.distances(features.astype(np.float64))
    return Block(
        start,
        stop,
        whitener.astype(np.float32),
        (means @ whitener).astype(np.float32),
        float(train.mean()),
        max(float(train.std()), 1e-6),  # one image per class: no spread to measure
    )


def fit_distribution(
    features: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    bounds: list[tuple[int, int]],
) -> list[Block]:
    # A class with no training image has no mean; it cannot anchor anything.
    present = [c for c in classes if c in set(labels)]
    index = {c: i for i, c in enumerate(present)}
    rows = np.asarray([index[c] for c in labels])
    return [fit_block(features, rows, len(present), a, b) for a, b in bounds]


def energy(logits: np.ndarray) -> np.ndarray:
    """Negative free energy, -logsumexp(logits) (Liu et al., 2020): higher is more unusual."""
    top = logits.max(axis=1, keepdims=True)
    scores: np.ndarray = -(top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))
    return scores


def quality_thresholds(train: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, float]:
    """Each check halfway from a far tail of the training images to the end of its scale.

    The tail alone would refuse 1 training image in 1,000 per check; dermoscopes elsewhere
    (darker vignettes, softer optics) vary more than HAM10000's, and an image bad enough to
    retake lies far beyond it (measured on the dev set's degraded images), so the line sits
    halfway out. too_small is the model's input size, and at least the checks' own view
    (at least 160x120): below it the model and the checks would see pixels invented by
    upsampling.
    """
    out: dict[str, float] = {}
    for name, values in train.items():
        if name == "too_small":
            out[name] = float(max(min(spec.input_size), min(view_size(spec))))
        elif name in HIGHER_IS_WORSE:  # brightness: halfway from the tail to white
            tail = float(np.quantile(values, 1 - QUALITY_TAIL))
            out[name] = round(tail + (255 - tail) * QUALITY_MARGIN, 2)
        else:  # halfway from the tail to zero
            out[name] = round(float(np.quantile(values, QUALITY_TAIL)) * (1 - QUALITY_MARGIN), 2)
    return out


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return round(float(roc_auc_score(y, np.r_[inside, outside])), 4)


def rejected(scored: Scored, thresholds: dict[str, float], dist: Distribution | None) -> np.ndarray:
    """[N] bool: refused by any quality check or by the distribution check."""
    n = len(next(iter(scored.quality.values())))
    out = np.zeros(n, bool)
    for name, limit in thresholds.items():
        values = scored.quality[name]
        out |= values > limit if name in HIGHER_IS_WORSE else values < limit
    if dist is not None and scored.features is not None:
        out |= dist.scores(scored.features) > dist.threshold
    return out


def _read(paths: Sequence[Path]) -> Iterable[bytes]:
    return (p.read_bytes() for p in paths)


def fit_gate(
    model_path: Path,
    images_dir: Path | None = None,
    split_csv: Path | None = None,
    fullres_dir: Path | None = None,
    degraded_count: int = 150,
) -> dict[str, Any]:
    """Add the features output if possible, fit the gate, write the gate file(s); returns the
    gate document (thresholds and the measured figures)."""
    from conversion.devset import degraded, out_of_scope, round_field
    from conversion.images import DEFAULT_IMAGES, DEFAULT_SPLIT, read_labels

    images_dir = images_dir or DEFAULT_IMAGES
    split_csv = split_csv or DEFAULT_SPLIT
    ensure_features(model_path)
    scorer = Scorer(model_path)
    spec = scorer.spec
    train = read_labels(split_csv, images_dir, "train")
    val = read_labels(split_csv, images_dir, "val")
    test = read_labels(split_csv, images_dir, "test")

    s_train = scorer.score(_read([s.path for s in train]), len(train), "train")
    s_val = scorer.score(_read([s.path for s in val]), len(val), "val")
    s_test = scorer.score(_read([s.path for s in test]), len(test), "test")
    thresholds = quality_thresholds(s_train.quality, spec)

    dist: Distribution | None = None
    figures: dict[str, Any] = {}
    arrays_name = None
    digest = None
    if s_train.features is not None and s_val.features is not None:
        blocks = fit_distribution(
            s_train.features, [s.dx for s in train], list(spec.labels), scorer.blocks
        )
        val_scores = Distribution(tuple(blocks), float("inf")).scores(s_val.features)
        threshold = round(float(np.quantile(val_scores, 1 - FALSE_REJECT_TARGET)), 3)
        dist = Distribution(tuple(blocks), threshold)
        buf = io.BytesIO()
        # Any: numpy's stubs would match a ** mapping against savez's allow_pickle too.
        arrays: dict[str, Any] = dist.to_arrays()
        np.savez_compressed(buf, **arrays)
        arrays_name = gate_path(model_path, spec).with_suffix(".npz").name
        with atomic_path(model_path.with_name(arrays_name)) as tmp:
            tmp.write_bytes(buf.getvalue())
        digest = hashlib.sha256(buf.getvalue()).hexdigest()

    # The record: how each part does on held-in images and on the dev set.
    rng = np.random.default_rng(0)
    pick = rng.choice(len(test), size=min(degraded_count, len(test)), replace=False)
    dev_items = [*out_of_scope(), *degraded([test[i].path for i in pick], rng)]
    s_dev = scorer.score((i.data for i in dev_items), len(dev_items), "dev set")
    groups = sorted({i.group for i in dev_items})
    group_of = np.asarray([i.group for i in dev_items])
    rej_dev = rejected(s_dev, thresholds, dist)
    rej_quality_dev = rejected(s_dev, thresholds, None)
    figures["false_rejects"] = {
        "val": _rate(rejected(s_val, thresholds, dist)),
        "test": _rate(rejected(s_test, thresholds, dist)),
        "test_quality_only": _rate(rejected(s_test, thresholds, None)),
        "test_images": len(test),
    }
    # Dermoscopy framed by a round lens, which the gate should let through like the rest.
    framed = list(round_field([test[i].path for i in pick]))
    framed_group = np.asarray([i.group for i in framed])
    for key, handled in (("round_field", True), ("round_field_left_black", False)):
        s_framed = scorer.score((i.data for i in framed), len(framed), key, handled)
        rej_framed = rejected(s_framed, thresholds, dist)
        figures["false_rejects"][key] = {
            g: _rate(rej_framed[framed_group == g]) for g in sorted(set(framed_group))
        }
    figures["false_rejects"]["round_field_images"] = len(pick)
    if fullres_dir is not None and fullres_dir.is_dir():
        full = sorted(fullres_dir.glob("*.jpg"))
        s_full = scorer.score(_read(full), len(full), "fullres")
        figures["false_rejects"]["fullres"] = int(rejected(s_full, thresholds, dist).sum())
        figures["false_rejects"]["fullres_images"] = len(full)
    # By name, so the card can say what got through (counts alone hide that it was, say,
    # every crop of one fundus photograph).
    figures["accepted_dev_items"] = [
        f"{item.group}/{item.name}"
        for item, refused in zip(dev_items, rej_dev, strict=True)
        if not refused
    ]
    figures["rejection_by_group"] = {
        g: {
            "images": int((group_of == g).sum()),
            "rejected": _rate(rej_dev[group_of == g]),
            "by_quality_checks": _rate(rej_quality_dev[group_of == g]),
        }
        for g in groups
    }
    if dist is not None and s_dev.features is not None and s_test.logits is not None:
        far = ~np.char.startswith(group_of.astype(str), "degraded")
        assert s_test.features is not None and s_dev.logits is not None
        figures["auroc_test_vs_non_dermoscopic"] = {
            "mahalanobis": _auroc(dist.scores(s_test.features), dist.scores(s_dev.features[far])),
            "energy": _auroc(energy(s_test.logits), energy(s_dev.logits[far])),
        }
    doc: dict[str, Any] = {
        "schema": GATE_SCHEMA,
        "model": spec.name,
        "quality": {
            "thresholds": thresholds,
            "view": list(scorer.view),
            "how": (
                f"halfway out from the train split's {QUALITY_TAIL} tail; too_small at the "
                "model's input size"
            ),
        },
        "distribution": None
        if dist is None
        else {
            "method": "mahalanobis_feature_ensemble",
            "blocks": [list(b) for b in scorer.blocks],
            "arrays": arrays_name,
            "sha256": digest,
            "threshold": dist.threshold,
            "how": (
                f"train split statistics; threshold at val's {1 - FALSE_REJECT_TARGET:.0%} quantile"
            ),
        },
        "figures": figures,
    }
    target = gate_path(model_path, spec)
    write_text(target, json.dumps(doc, indent=2) + "\n")
    log.info("wrote %s (%s)", target, "quality + distribution" if dist else "quality only")
    return doc


def _rate(mask: np.ndarray) -> float:
    return round(float(mask.mean()), 4) if len(mask) else 0.0


def record_in_manifest(manifest_path: Path, model_path: Path, doc: dict[str, Any]) -> None:
    """Name the gate file(s) in ``manifest.json`` with their hashes (files.gate), and refresh
    the entry of the model file itself, which the features output changed."""
    from app.inference.classifier import file_sha256

    manifest = json.loads(manifest_path.read_text())
    base = manifest_path.parent
    rel = model_path.resolve().relative_to(base.resolve()).as_posix()
    for entry in manifest["files"].values():
        if entry.get("path") == rel:
            entry["sha256"] = file_sha256(model_path)
            entry["size"] = model_path.stat().st_size
    gate_file = gate_path(model_path, ModelSpec(name=doc["model"]))
    entry = {
        "path": gate_file.relative_to(base).as_posix(),
        "sha256": file_sha256(gate_file),
        "size": gate_file.stat().st_size,
        "purpose": "intended-use gate: quality thresholds and distribution statistics",
        "mode": "quality+distribution" if doc["distribution"] else "quality only",
    }
    if doc["distribution"]:
        arrays = gate_file.with_name(doc["distribution"]["arrays"])
        entry["arrays"] = {
            "path": arrays.relative_to(base).as_posix(),
            "sha256": file_sha256(arrays),
            "size": arrays.stat().st_size,
        }
    manifest["files"]["gate"] = entry
    write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
