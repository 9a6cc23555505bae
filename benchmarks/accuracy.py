"""``python -m benchmarks accuracy MODEL --images DIR --labels CSV [--json OUT]``.

Runs every labelled image through the serving ``preprocess`` and a Keras (.h5) or ONNX model,
and reports the metrics in ``conversion.metrics``.
"""

from __future__ import annotations

import argparse
import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from conversion.metrics import classification_metrics

log = logging.getLogger(__name__)


def _h5_spec(model_path: Path, model: Any, input_scale: float | None) -> Any:
    from conversion.source import SpecOverrides, check_hdf5, resolve_spec

    return resolve_spec(
        model_path, model, SpecOverrides(input_scale=input_scale), check_hdf5(model_path)
    )


def evaluate(
    model_path: Path,
    images_dir: Path,
    labels_csv: Path,
    split: str | None = None,
    input_scale: float | None = None,
) -> dict[str, Any]:
    """Metrics of one model on a labelled folder (CSV columns ``image_id,dx``[, ``split``]).

    Args:
        split: keep only rows whose ``split`` column equals it.
        input_scale: pixel scaling for an .h5 without the ``skinlesion_spec`` attribute (1/255
            for the upstream model); ONNX models carry it in their metadata.
    """
    from conversion.images import preprocess_paths, read_labels
    from conversion.runtime import predict_keras, predict_onnx

    samples = read_labels(labels_csv, images_dir, split)
    suffix = model_path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".keras"):
        from conversion.source import load_keras

        model = load_keras(model_path)
        spec = _h5_spec(model_path, model, input_scale)
        probs = predict_keras(model, preprocess_paths([s.path for s in samples], spec, "images"))
    elif suffix == ".onnx":
        from conversion.convert import read_spec

        spec = read_spec(model_path)
        probs = predict_onnx(
            model_path, preprocess_paths([s.path for s in samples], spec, "images")
        )
    else:
        raise ValueError(f"{model_path}: expected a .h5 or .onnx model")
    unknown = {s.dx for s in samples} - set(spec.labels)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not among the model's {spec.labels}")
    y = np.array([spec.labels.index(s.dx) for s in samples], np.int64)
    result = classification_metrics(probs, y, spec.labels, spec.mel_threshold)
    return {"model": str(model_path), "images": str(images_dir), "split": split, **result}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``accuracy`` on the benchmarks CLI."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "accuracy", help="accuracy, BMA, AUC, per-class, melanoma and ECE of a .h5/.onnx model"
    )
    p.add_argument("model", type=Path)
    p.add_argument("--images", type=Path, required=True, help="folder of <image_id>.jpg")
    p.add_argument("--labels", type=Path, required=True, help="CSV with image_id,dx[,split]")
    p.add_argument("--split", help="keep rows of this split (train/val/test)")
    p.add_argument(
        "--input-scale",
        type=lambda t: float(Fraction(t)),
        help="for an .h5 without skinlesion_spec, e.g. 1/255",
    )
    p.add_argument("--json", type=Path, help="write the metrics here")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    result = evaluate(args.model, args.images, args.labels, args.split, args.input_scale)
    print(render(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def render(result: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    lines = [
        f"{result['model']}: n={result['n']}  accuracy {pct(result['accuracy'])}  "
        f"BMA {pct(result['bma'])}  AUC {result['auc_macro_ovr'] or float('nan'):.3f}  "
        f"ECE {result['ece']:.3f}",
        f"{'class':<7}{'n':>6}{'recall':>9}{'precision':>11}",
    ]
    for c, pc in result["per_class"].items():
        lines.append(f"{c:<7}{pc['support']:>6}{pct(pc['recall']):>9}{pct(pc['precision']):>11}")
    if "mel" in result:
        m = result["mel"]
        lines.append(
            f"melanoma at threshold {m['threshold']}: sensitivity {pct(m['sensitivity'])}, "
            f"specificity {pct(m['specificity'])}"
        )
    cm = result["confusion_matrix"]
    lines.append("confusion (rows true, cols predicted): " + " ".join(cm["labels"]))
    lines += ["  " + " ".join(f"{v:>5}" for v in row) for row in cm["rows_true_cols_pred"]]
    return "\n".join(lines)
