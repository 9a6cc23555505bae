"""``quantize``: FP32 ONNX -> INT8 ONNX, calibrated on real images via the serving preprocess."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from app.inference.spec import ModelSpec
from conversion.convert import read_spec, set_metadata
from conversion.errors import ConversionError
from conversion.files import save_onnx
from conversion.images import balanced_subset, preprocess_paths, read_labels

log = logging.getLogger(__name__)

FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
TYPES = {
    "uint8": QuantType.QUInt8,
    "int8": QuantType.QInt8,
    "uint16": QuantType.QUInt16,  # accurate but not fast: for diagnosis
    "int16": QuantType.QInt16,  # weights, for diagnosis only
}
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """How to quantise. Defaults: the fastest here that passes the gates.

    U8S8 (uint8 activations, int8 weights) matches VNNI's ``vpdpbusd`` operand order; the
    documented S8S8 default was slower than FP32 on this CPU, QOperator and dynamic far slower.
    """

    dynamic: bool = False
    format: str = "qdq"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    # 7-bit weights: without VNNI (AVX2 only, as on this build machine) U8S8 saturates
    # vpmaddubsw's int16 sums; measured 88.7% -> 93.3% top-1 agreement on the upstream model.
    reduce_range: bool = True
    # the last weight layer and what follows (softmax) stay FP32: logits span hundreds here
    keep_last_fp32: bool = True
    method: str = "minmax"
    op_types: tuple[str, ...] = ()  # empty: every op type ORT can quantise
    calibration_count: int = 350
    exclude_nodes: tuple[str, ...] = ()
    seed: int = 0
    extra_options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["exclude_nodes"] = list(self.exclude_nodes)
        d["op_types"] = list(self.op_types)
        return d


class ImageReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds preprocessed real images in small batches to the calibrator."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 16) -> None:
        self.input_name = input_name
        self.x = x
        self.batch = batch
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.x):
            return None
        chunk = self.x[self._pos : self._pos + self.batch]
        self._pos += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self._pos = 0


def calibration_paths(
    images_dir: Path, labels_csv: Path | None, count: int, seed: int = 0
) -> list[Path]:
    """Training-split images (class-balanced) when a split CSV is given, else any images in DIR."""
    if labels_csv is not None:
        part = "train" if "split" in labels_csv.read_text().splitlines()[0] else None
        samples = read_labels(labels_csv, images_dir, part)
        return [s.path for s in balanced_subset(samples, count, seed)]
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not paths:
        raise ConversionError(f"{images_dir}: no JPEG or PNG images for calibration")
    rng = np.random.default_rng(seed)
    return [paths[i] for i in sorted(rng.permutation(len(paths))[:count])]


def preprocess_for_quantization(fp32: Path, output: Path) -> None:
    """ORT's recommended pre-step: shape inference and graph optimisation (needs sympy)."""
    quant_pre_process(str(fp32), str(output), skip_symbolic_shape=False)


def quantize(
    fp32: Path,
    output: Path,
    calibration: list[Path] | None,
    config: QuantConfig | None = None,
    pre_processed: Path | None = None,
) -> ModelSpec:
    """Quantise ``fp32`` to ``output``; ``calibration`` are image files (static mode only).

    Args:
        pre_processed: where to keep the ``quant_pre_process`` output (the FP32 graph whose
            tensor names match the INT8 one, which ``qdq_loss_debug`` needs).
    """
    config = config or QuantConfig()
    spec = read_spec(fp32)
    if config.format not in FORMATS or config.method not in METHODS:
        raise ConversionError(f"unknown format {config.format!r} or method {config.method!r}")
    if config.activation_type not in TYPES or config.weight_type not in TYPES:
        raise ConversionError(f"activation and weight types must be one of {sorted(TYPES)}")
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp_dir:
        tmp = Path(tmp_dir)
        pre = pre_processed or tmp / "pre.onnx"
        preprocess_for_quantization(fp32, pre)
        out = tmp / "int8.onnx"
        exclude = list(config.exclude_nodes)
        if config.keep_last_fp32:
            exclude += [n for n in tail_nodes(onnx.load(str(pre))) if n not in exclude]
        if config.dynamic:
            quantize_dynamic(
                str(pre),
                str(out),
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                weight_type=TYPES[config.weight_type],
                nodes_to_exclude=exclude or None,
            )
        else:
            if not calibration:
                raise ConversionError("static quantisation needs calibration images")
            x = preprocess_paths(calibration, spec, desc="calibration images")
            input_name = onnx.load(str(pre)).graph.input[0].name
            log.info("calibrating on %d images (%s)", len(x), config.method)
            quantize_static(
                # histogram calibrators need equal-sized batches: feed them one image at a time
                str(pre),
                str(out),
                ImageReader(input_name, x, batch=16 if config.method == "minmax" else 1),
                quant_format=FORMATS[config.format],
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                activation_type=TYPES[config.activation_type],
                weight_type=TYPES[config.weight_type],
                calibrate_method=METHODS[config.method],
                nodes_to_exclude=exclude or None,
                op_types_to_quantize=list(config.op_types) or None,
                extra_options=config.extra_options or None,
            )
        proto = onnx.load(str(out))
    int8_spec = dataclasses.replace(
        spec,
        extra={
            **spec.extra,
            "precision": "int8",
            "quantization": config.describe(),
            "calibration_images": 0 if config.dynamic else len(calibration or []),
        },
    )
    set_metadata(proto, int8_spec)  # metadata must survive quantisation for the server
    save_onnx(proto, output)
    log.info("wrote %s", output)
    return int8_spec


def tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the last Conv/Gemm/MatMul node and every node after it (graphs are topo-sorted)."""
    nodes = list(model.graph.node)
    weighted = [i for i, n in enumerate(nodes) if n.op_type in {"Conv", "Gemm", "MatMul"}]
    return [n.name for n in nodes[weighted[-1] :]] if weighted else []


def parse_exclude(values: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(n for v in values or () for n in v.split(",") if n)
