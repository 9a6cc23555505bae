"""Accuracy suite for ``run``: Keras, FP32 and INT8 on the held-out test split, with deltas.

The metrics come from ``benchmarks.accuracy.evaluate`` (the ``accuracy`` subcommand), so the
numbers here are the ones that command prints.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Any

from benchmarks.artifacts import ModelSet
from benchmarks.images import test_split
from benchmarks.markdown import fmt, table
from benchmarks.results import SuiteResult
from benchmarks.stats import Figure
from benchmarks.suite import Suite
from benchmarks.targets import Verdict
from conversion.metrics import (
    INT8_MAX_BMA_DROP,
    INT8_MAX_MEL_RECALL_DROP,
    INT8_MAX_RECALL_DROP,
    INT8_MIN_TOP1,
)

log = logging.getLogger(__name__)

PERCENT_MEASURES = ("accuracy", "bma")


def _has_split_column(labels_csv: Path) -> bool:
    with labels_csv.open(newline="") as fh:
        return "split" in (csv.DictReader(fh).fieldnames or [])


def _recall(metrics: dict[str, Any], cls: str) -> float | None:
    value = metrics.get("per_class", {}).get(cls, {}).get("recall")
    return float(value) if isinstance(value, int | float) else None


def _add_metrics(suite: SuiteResult, name: str, m: dict[str, Any]) -> None:
    n = int(m["n"])
    for key in PERCENT_MEASURES:
        suite.add(f"{name}/{key}", Figure.value(100 * m[key], "%", n))
    if m.get("auc_macro_ovr") is not None:
        suite.add(f"{name}/auc_macro_ovr", Figure.value(m["auc_macro_ovr"], "AUC", n))
    suite.add(f"{name}/ece", Figure.value(m["ece"], "ECE", n))
    mel = m.get("mel", {})
    for key in ("sensitivity", "specificity"):
        if isinstance(mel.get(key), int | float):
            suite.add(f"{name}/mel_{key}", Figure.value(100 * mel[key], "%", n))


def _deltas(suite: SuiteResult, pair: str, ref: dict[str, Any], cand: dict[str, Any]) -> None:
    """Drops from reference to candidate in percentage points (positive = candidate worse)."""
    n = int(cand["n"])
    suite.add(f"{pair}/bma_drop", Figure.value(100 * (ref["bma"] - cand["bma"]), "points", n))
    suite.add(
        f"{pair}/accuracy_drop",
        Figure.value(100 * (ref["accuracy"] - cand["accuracy"]), "points", n),
    )
    drops = [
        100 * (r - c)
        for cls in ref.get("per_class", {})
        if (r := _recall(ref, cls)) is not None and (c := _recall(cand, cls)) is not None
    ]
    if drops:
        suite.add(f"{pair}/max_class_recall_drop", Figure.value(max(drops), "points", n))
    r_mel, c_mel = _recall(ref, "mel"), _recall(cand, "mel")
    if r_mel is not None and c_mel is not None:
        suite.add(f"{pair}/mel_recall_drop", Figure.value(100 * (r_mel - c_mel), "points", n))


def _agreement(
    models: ModelSet, images_dir: Path, labels_csv: Path, split: str | None, suite: SuiteResult
) -> None:
    """Top-1 agreement and largest probability gap of INT8 against FP32 on the same images."""
    from conversion.convert import read_spec
    from conversion.images import preprocess_paths, read_labels
    from conversion.metrics import agreement
    from conversion.runtime import predict_onnx

    assert models.fp32 is not None and models.int8 is not None
    samples = read_labels(labels_csv, images_dir, split)
    paths = [s.path for s in samples]
    ref = predict_onnx(models.fp32, preprocess_paths(paths, read_spec(models.fp32), "fp32"))
    cand = predict_onnx(models.int8, preprocess_paths(paths, read_spec(models.int8), "int8"))
    result = agreement(ref, cand)
    suite.add(
        "int8_vs_fp32/top1_agreement", Figure.value(100 * result["top1_agreement"], "%", len(paths))
    )
    suite.add(
        "int8_vs_fp32/max_abs_prob_diff",
        Figure.value(result["max_abs_prob_diff"], "probability", len(paths)),
    )


def accuracy_suite(models: ModelSet, quick: bool = False) -> SuiteResult:
    """Evaluate every available form of the model on the same labelled images."""
    suite = SuiteResult("accuracy", quick)
    data = test_split(quick)
    split = "test" if _has_split_column(data.labels_csv) else None
    try:
        from benchmarks.accuracy import evaluate
    except ImportError as exc:
        suite.skip("all", f"benchmarks.accuracy needs {exc.name} (the conversion extra)")
        return suite
    spec = models.spec() if models.any_onnx else None
    metrics: dict[str, dict[str, Any]] = {}
    for name, path in (("keras", models.keras), ("fp32", models.fp32), ("int8", models.int8)):
        if path is None:
            suite.skip(name, f"no {name} model in the manifest or on the command line")
            continue
        # An .h5 without the spec attribute (the upstream model) gets the ONNX model's scaling.
        scale = spec.input_scale if (name == "keras" and spec) else None
        try:
            metrics[name] = evaluate(path, data.images_dir, data.labels_csv, split, scale)
        except ImportError as exc:
            suite.skip(name, f"needs {exc.name} (the conversion extra)")
            continue
        _add_metrics(suite, name, metrics[name])
    if "fp32" in metrics and "keras" in metrics:
        _deltas(suite, "fp32_vs_keras", metrics["keras"], metrics["fp32"])
    if "int8" in metrics and "fp32" in metrics:
        _deltas(suite, "int8_vs_fp32", metrics["fp32"], metrics["int8"])
        _agreement(models, data.images_dir, data.labels_csv, split, suite)
    first = next(iter(metrics.values()), {})
    suite.params = {
        "images": data.description,
        "images_dir": str(data.images_dir),
        "labels": str(data.labels_csv),
        "split": split,
        "n": first.get("n"),
        "per_class_recall": {
            name: {c: v.get("recall") for c, v in m.get("per_class", {}).items()}
            for name, m in metrics.items()
        },
    }
    return suite


# RESULTS.md section and targets (benchmarks.suite.Suite)


def _accuracy_section(run: dict[str, Any]) -> list[str]:
    suite = run.get("suites", {}).get("accuracy", {})
    figs = suite.get("figures", {})
    if not figs:
        return ["_Accuracy suite not run._", ""]
    params = suite.get("params", {})
    engines = [e for e in ("keras", "fp32", "int8") if f"{e}/bma" in figs]
    measures = ("accuracy", "bma", "auc_macro_ovr", "ece", "mel_sensitivity", "mel_specificity")
    # AUC and ECE live in 0-1: two decimals would round a 0.948 up to a target of 0.95.
    digits = {"auc_macro_ovr": 3, "ece": 3}
    rows = [
        [m, *[fmt(figs.get(f"{e}/{m}", {}).get("median"), digits.get(m, 2)) for e in engines]]
        for m in measures
        if any(f"{e}/{m}" in figs for e in engines)
    ]
    deltas = [
        [k, fmt(v["median"], 4), v["unit"]]
        for k, v in sorted(figs.items())
        if k.startswith(("int8_vs_fp32/", "fp32_vs_keras/"))
    ]
    return [
        f"On {params.get('images')} (n = {params.get('n')}). Percent, except AUC and ECE (0–1).",
        "",
        *table(["measure", *engines], rows),
        "Drops are reference minus candidate (positive: the candidate is worse).",
        "",
        *table(["delta", "value", "unit"], deltas),
    ]


GATES_TEXT = (
    f"top-1 ≥ {INT8_MIN_TOP1 * 100:g} %; drops ≤ {INT8_MAX_BMA_DROP * 100:g} (BMA), "
    f"≤ {INT8_MAX_RECALL_DROP * 100:g} (any class), ≤ {INT8_MAX_MEL_RECALL_DROP * 100:g} "
    "(mel recall) pt"
)


def _accuracy_gates(run: dict[str, Any]) -> Verdict:
    acc = run.get("suites", {}).get("accuracy", {})
    figures = acc.get("figures", {})
    needed = (
        "int8_vs_fp32/top1_agreement",
        "int8_vs_fp32/bma_drop",
        "int8_vs_fp32/max_class_recall_drop",
        "int8_vs_fp32/mel_recall_drop",
    )
    values = {k: figures.get(k, {}).get("median") for k in needed}
    if any(v is None for v in values.values()):
        return Verdict(
            "INT8 within the accuracy gates",
            "conversion #4",
            GATES_TEXT,
            "—",
            None,
        )
    agree, bma, cls, mel = (float(values[k]) for k in needed)
    ok = (
        agree >= INT8_MIN_TOP1 * 100
        and bma <= INT8_MAX_BMA_DROP * 100
        and cls <= INT8_MAX_RECALL_DROP * 100
        and mel <= INT8_MAX_MEL_RECALL_DROP * 100
    )
    # Drops are FP32 minus INT8 in points; a negative drop is a gain.
    measured = f"top-1 {agree:.1f} %; drops: BMA {bma:.1f}, worst class {cls:.1f}, mel {mel:.1f} pt"
    return Verdict(
        "INT8 within the accuracy gates",
        "conversion #4",
        GATES_TEXT,
        measured,
        ok,
    )


def _run(models: ModelSet, args: argparse.Namespace) -> SuiteResult:
    return accuracy_suite(models, args.quick)


SUITE = Suite(
    name="accuracy",
    help="accuracy of Keras, FP32 and INT8 on the test split",
    run=_run,
    title="Accuracy on the test split",
    section=_accuracy_section,
    targets=lambda run: [_accuracy_gates(run)],
    # ``python -m benchmarks accuracy MODEL`` evaluates one model (benchmarks/accuracy.py).
    command=False,
)
