"""An FP16 copy of the FP32 model for onnxruntime's CUDA provider.

Weights and activations in half precision, inputs and outputs still float32 (``keep_io_types``)
so the server feeds it the same tensors. Half precision pays on GPUs (tensor cores); on a CPU
onnxruntime runs most of it through casts, so the CPU parity check here only proves the file is
correct, not that it is fast. The check is top-1 agreement and the largest probability change
against FP32 on real images.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from conversion.convert import read_spec, set_metadata
from conversion.errors import GateError
from conversion.files import save_onnx

log = logging.getLogger(__name__)

FP16_MIN_TOP1 = 0.99  # half precision moves probabilities by ~1e-3; flips only at near-ties


def to_fp16(fp32: Path, out: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    spec = read_spec(fp32)  # the server reads the precision from the metadata
    set_metadata(half, dataclasses.replace(spec, extra={**spec.extra, "precision": "fp16"}))
    save_onnx(half, out)


def check(fp32: Path, fp16: Path, batch: np.ndarray) -> dict[str, Any]:
    """Run both on ``batch`` (model inputs) on the CPU; raises GateError below FP16_MIN_TOP1."""
    import onnxruntime as ort

    def probs(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        output = session.get_outputs()[0].name
        return np.asarray(session.run([output], {name: batch})[0])

    a, b = probs(fp32), probs(fp16)
    agreement = float((a.argmax(1) == b.argmax(1)).mean())
    result: dict[str, Any] = {
        "images": len(batch),
        "top1_agreement": agreement,
        "max_abs_prob_diff": float(np.abs(a - b).max()),
        "checked_on": "CPUExecutionProvider (no GPU was available for the CUDA check)",
    }
    if agreement < FP16_MIN_TOP1:
        raise GateError(f"FP16 disagrees with FP32: {result}")
    return result
