"""INT8 that pays, or an honest no: several quantisation recipes, judged on val, timed here.

``python -m conversion int8-sweep models/skin_lesion.onnx`` quantises the FP32 model with each
recipe below, scores it against FP32 on the **val** split with the same gates as ``build``
(top-1 agreement, BMA drop, per-class recall drops) and times both on one thread, interleaved,
at batch 1 and 8. INT8 is worth preferring only if it passes the gates and is at least 1.3x
faster at batch 1 and 1.5x at batch 8 (issue 17). Speed depends on the CPU: the result records
the model name and whether it has AVX512-VNNI (and AMX), and a decision on a CPU without VNNI is
left open.

Two diagnosis rows, never candidates, say where the error comes from: 16-bit activations with
8-bit weights, and 16-bit activations with 16-bit weights (both far slower than FP32 here).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import onnx

from app.config import cpu_model_and_flags
from conversion.cam import consumers_of
from conversion.convert import read_spec
from conversion.images import read_labels
from conversion.quantize import QuantConfig, calibration_paths, quantize
from conversion.runtime import measure_latency
from conversion.verify import verify

log = logging.getLogger(__name__)

SPEEDUP_NEEDED = {"batch1": 1.3, "batch8": 1.5}
DIAGNOSIS = "(diagnosis)"  # in a recipe's name: it explains the others and is never a candidate


def first_convs(model: onnx.ModelProto) -> list[str]:
    """The first Conv on every path from the input (one per ensemble member)."""
    consumers = consumers_of(model.graph)
    found, queue, seen = [], [i.name for i in model.graph.input], set()
    while queue:
        for node in consumers.get(queue.pop(), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type == "Conv":
                found.append(node.name)
            else:
                queue.extend(node.output)
    return found


def recipes(model: onnx.ModelProto) -> dict[str, QuantConfig]:
    """U8S8 per-channel QDQ (VNNI's operand order) with the last layer in FP32, and the first
    too where named; three calibrations; QOperator against QDQ."""
    first = tuple(first_convs(model))
    base = QuantConfig(reduce_range=False)  # full 8-bit weights: this recipe is for VNNI CPUs
    return {
        "QDQ minmax, last FP32": base,
        "QDQ entropy, first+last FP32": dataclasses.replace(
            base, method="entropy", exclude_nodes=first
        ),
        "QDQ percentile, first+last FP32": dataclasses.replace(
            base, method="percentile", exclude_nodes=first
        ),
        "QOperator percentile, first+last FP32": dataclasses.replace(
            base, format="qoperator", method="percentile", exclude_nodes=first
        ),
        f"QDQ minmax, 16-bit activations, 8-bit weights {DIAGNOSIS}": dataclasses.replace(
            base, activation_type="uint16"
        ),
        f"QDQ minmax, 16-bit activations, 16-bit weights {DIAGNOSIS}": dataclasses.replace(
            base, activation_type="uint16", weight_type="int16"
        ),
    }


def cpu() -> dict[str, Any]:
    model, flags = cpu_model_and_flags()
    return {
        "model": model or "?",
        "avx512_vnni": "avx512_vnni" in flags,
        "amx_int8": "amx_int8" in flags,
        "avx2": "avx2" in flags,
    }


def verdict(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    """INT8 is preferred when a candidate recipe pays; without VNNI the question stays open."""
    if not machine["avx512_vnni"]:
        return "open: this CPU has no AVX512-VNNI, so INT8 speed cannot be judged here"
    paying = [r for r in rows if r["pays"] and DIAGNOSIS not in r["recipe"]]
    return "INT8 preferred" if paying else "FP32 preferred: no recipe pays"


def sweep(
    fp32: Path,
    images_dir: Path,
    split_csv: Path,
    calibration_count: int = 200,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Every recipe's gates (val) and speed-up (one thread); returns a JSON-ready record."""
    model = onnx.load(str(fp32))
    spec = read_spec(fp32)
    samples = read_labels(split_csv, images_dir, "val")
    calibration = calibration_paths(images_dir, split_csv, calibration_count)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="int8-sweep-") as tmp:
        for name, config in recipes(model).items():
            if only and name not in only:
                continue
            config = dataclasses.replace(config, calibration_count=calibration_count)
            path = Path(tmp) / f"{len(rows)}.onnx"
            int8_spec = quantize(fp32, path, calibration, config)
            report = verify(fp32, path, samples=samples, diagnose=False)
            timing = measure_latency({"fp32": (fp32, spec), "int8": (path, int8_spec)}, rounds=9)
            speedup = {b: round(timing["fp32"][b] / timing["int8"][b], 3) for b in SPEEDUP_NEEDED}
            gates_ok = not report.failed("fp32_int8")
            fast = all(speedup[b] >= need for b, need in SPEEDUP_NEEDED.items())
            rows.append(
                {
                    "recipe": name,
                    "config": config.describe(),
                    "gates_passed": gates_ok,
                    "failed_gates": [g.name for g in report.failed("fp32_int8")],
                    "top1_agreement": round(report.parity["fp32_int8"]["top1_agreement"], 4),
                    "ms_1thread": timing,
                    "speedup": speedup,
                    "pays": gates_ok and fast and DIAGNOSIS not in name,
                }
            )
            log.info("%s: %s", name, rows[-1])
    machine = cpu()
    return {
        "model": fp32.name,
        "split": "val",
        "images": len(samples),
        "cpu": machine,
        "needed": {"gates": "as in build", "speedup": SPEEDUP_NEEDED},
        "recipes": rows,
        "verdict": verdict(rows, machine),
    }
