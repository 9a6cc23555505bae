"""``verify``: the parity gates between Keras, FP32 ONNX and INT8 ONNX on real labelled images."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from app.inference.spec import ModelSpec
from conversion.convert import read_spec
from conversion.errors import ConversionError
from conversion.images import Sample, nhwc, preprocess_paths, read_labels
from conversion.metrics import (
    INT8_MAX_BMA_DROP,
    INT8_MAX_MEL_RECALL_DROP,
    INT8_MAX_RECALL_DROP,
    INT8_MIN_TOP1,
    agreement,
    classification_metrics,
    format_per_class,
)
from conversion.runtime import predict_keras, predict_onnx

log = logging.getLogger(__name__)

# Keras-vs-FP32 limits from issue 4; the INT8 gates live in conversion.metrics.
KERAS_MAX_ABS_DIFF = 1e-4
KERAS_MIN_TOP1 = 1.0


@dataclass(frozen=True, slots=True)
class Gate:
    name: str
    value: float
    limit: float
    kind: str  # "max" (value <= limit) or "min" (value >= limit)

    @property
    def passed(self) -> bool:
        # a tiny epsilon so 0.98 agreement on exactly 50 images is not lost to float rounding
        if self.kind == "max":
            return self.value <= self.limit + 1e-12
        return self.value >= self.limit - 1e-12


@dataclass(slots=True)
class VerifyReport:
    images: int
    gates: list[Gate] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    divergent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        # no gate evaluated is no evidence: all([]) would call it a pass
        return bool(self.gates) and all(g.passed for g in self.gates)

    def failed(self, prefix: str = "") -> list[Gate]:
        return [g for g in self.gates if not g.passed and g.name.startswith(prefix)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "passed": self.passed,
            "gates": [{**dataclasses.asdict(g), "passed": g.passed} for g in self.gates],
            "parity": self.parity,
            "metrics": self.metrics,
            "divergent_tensors": self.divergent,
        }

    def render(self) -> str:
        lines = [f"verified on {self.images} images"]
        for g in self.gates:
            op = "<=" if g.kind == "max" else ">="
            lines.append(
                f"  {'PASS' if g.passed else 'FAIL'}  {g.name:<34} {g.value:.6g} {op} {g.limit:g}"
            )
        if self.metrics:
            lines.append(format_per_class(self.metrics))
        if self.divergent:
            lines.append("most divergent INT8 tensors (lowest SQNR, dB):")
            lines += [
                f"  {d['tensor']:<48} {d['sqnr_db']:.1f}  node {d['node']}" for d in self.divergent
            ]
        return "\n".join(lines)


def _labels_index(samples: list[Sample], spec: ModelSpec) -> np.ndarray:
    unknown = {s.dx for s in samples} - set(spec.labels)
    if unknown:
        raise ConversionError(f"labels {sorted(unknown)} are not among the model's {spec.labels}")
    return np.array([spec.labels.index(s.dx) for s in samples], np.int64)


def int8_gates(ref: dict[str, Any], cand: dict[str, Any], top1: float) -> list[Gate]:
    """FP32 -> INT8 accuracy gates: agreement, BMA drop, per-class and melanoma recall drops."""
    gates = [
        Gate("fp32_int8.top1_agreement", top1, INT8_MIN_TOP1, "min"),
        Gate("fp32_int8.bma_drop", ref["bma"] - cand["bma"], INT8_MAX_BMA_DROP, "max"),
    ]
    for c, pc in ref["per_class"].items():
        if pc["recall"] is None:
            continue
        drop = pc["recall"] - cand["per_class"][c]["recall"]
        limit = INT8_MAX_MEL_RECALL_DROP if c == "mel" else INT8_MAX_RECALL_DROP
        gates.append(Gate(f"fp32_int8.recall_drop.{c}", drop, limit, "max"))
    return gates


def verify(
    fp32: Path,
    int8: Path | None = None,
    keras_h5: Path | None = None,
    images_dir: Path | None = None,
    labels_csv: Path | None = None,
    part: str | None = "test",
    debug_model: Path | None = None,
    samples: list[Sample] | None = None,
    diagnose: bool = True,
) -> VerifyReport:
    """Run every given model on the same real images and evaluate the gates.

    Args:
        part: the ``split`` value to keep from ``labels_csv`` (``None``: every row).
        debug_model: the FP32 graph INT8 was quantised from (``quant_pre_process`` output);
            used to name divergent tensors when an INT8 gate fails. Defaults to ``fp32``.
        samples: labelled images to use instead of reading ``labels_csv``.
        diagnose: on an INT8 gate failure, name the most divergent tensors (slow).
    """
    if int8 is None and keras_h5 is None:
        raise ConversionError(
            "nothing to compare: give --int8 INT8.onnx and/or --keras SOURCE.h5 "
            "(the FP32 model alone has no gates)"
        )
    if samples is None:
        if images_dir is None or labels_csv is None:
            raise ConversionError("verify needs --images and --labels (or samples)")
        samples = read_labels(labels_csv, images_dir, part)
    spec = read_spec(fp32)
    y = _labels_index(samples, spec)
    paths = [s.path for s in samples]
    x = preprocess_paths(paths, spec, desc="verify images")
    report = VerifyReport(images=len(samples))
    probs: dict[str, np.ndarray] = {"fp32": predict_onnx(fp32, x)}
    if keras_h5 is not None:
        from conversion.source import load_keras

        x_keras = (
            x if spec.layout == "NHWC" else preprocess_paths(paths, nhwc(spec), "keras images")
        )
        probs["keras"] = predict_keras(load_keras(keras_h5), x_keras)
        par = agreement(probs["keras"], probs["fp32"])
        report.parity["keras_fp32"] = par
        report.gates += [
            Gate(
                "keras_fp32.max_abs_prob_diff", par["max_abs_prob_diff"], KERAS_MAX_ABS_DIFF, "max"
            ),
            Gate("keras_fp32.top1_agreement", par["top1_agreement"], KERAS_MIN_TOP1, "min"),
        ]
    if int8 is not None:
        int8_spec = read_spec(int8)
        if (int8_spec.layout, int8_spec.input_size) != (spec.layout, spec.input_size):
            raise ConversionError("FP32 and INT8 models take different inputs")
        probs["int8"] = predict_onnx(int8, x)
        par = agreement(probs["fp32"], probs["int8"])
        report.parity["fp32_int8"] = par
    for name in ("keras", "fp32", "int8"):
        if name in probs:
            report.metrics[name] = classification_metrics(
                probs[name], y, spec.labels, spec.mel_threshold
            )
    if int8 is not None:
        report.gates += int8_gates(
            report.metrics["fp32"],
            report.metrics["int8"],
            report.parity["fp32_int8"]["top1_agreement"],
        )
        if diagnose and report.failed("fp32_int8"):
            report.divergent = divergent_tensors(debug_model or fp32, int8, x[:64])
    return report


def divergent_tensors(fp32: Path, int8: Path, x: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
    """The INT8 activations furthest from FP32 (lowest SQNR), with the FP32 node producing each."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    from conversion.quantize import ImageReader

    input_name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="qdq-debug-") as tmp:
        aug_fp32, aug_int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        modify_model_output_intermediate_tensors(str(fp32), str(aug_fp32))
        modify_model_output_intermediate_tensors(str(int8), str(aug_int8))
        float_acts = collect_activations(str(aug_fp32), ImageReader(input_name, x))
        qdq_acts = collect_activations(str(aug_int8), ImageReader(input_name, x))
    matching = create_activation_matching(qdq_acts, float_acts)
    errors = compute_activation_error(matching)
    producers = {o: n.name for n in onnx.load(str(fp32)).graph.node for o in n.output}
    ranked = sorted(
        ((name, float(e["xmodel_err"])) for name, e in errors.items() if "xmodel_err" in e),
        key=lambda item: item[1],
    )
    return [
        {"tensor": name, "sqnr_db": sqnr, "node": producers.get(name)}
        for name, sqnr in ranked[:top]
    ]
