"""``build``: the whole chain for a shipped model, ending in ``manifest.json`` and a Triton repo."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shutil
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import onnx

from app.inference.classifier import file_sha256 as sha256_file
from app.inference.spec import ModelSpec
from conversion.convert import DEFAULT_OPSET, Layout, convert
from conversion.errors import GateError
from conversion.files import atomic_path, write_text
from conversion.gate import ensure_features, fit_gate, record_in_manifest
from conversion.images import read_labels
from conversion.quantize import QuantConfig, calibration_paths, quantize
from conversion.runtime import measure_latency
from conversion.source import SpecOverrides, check_hdf5
from conversion.triton import export_triton
from conversion.verify import VerifyReport, verify

log = logging.getLogger(__name__)

# Issue 4's targets for INT8 over FP32 on one thread; reported, not enforced (gates are).
SPEEDUP_TARGETS = {"batch1": 1.5, "batch8": 1.8}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "tensorflow",
        "keras",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "numpy",
        "opencv-python-headless",
    ):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            if dist == "tensorflow":  # the conversion extra pins tensorflow-cpu
                with contextlib.suppress(importlib_metadata.PackageNotFoundError):
                    out[dist] = importlib_metadata.version("tensorflow-cpu")
    return out


def file_entry(path: Path, base: Path, spec: ModelSpec) -> dict[str, Any]:
    return {
        "path": os.path.relpath(path, base),
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "precision": spec.extra.get("precision"),
        "layout": spec.layout,
        # the 16-bit fallback lifts the opset to 21, so record each file's own
        "opset": max(
            o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")
        ),
    }


def per_image_ms(timing: dict[str, float]) -> float:
    """Cost per image over a single request and a micro-batch of 8, the server's two regimes."""
    return timing["batch1"] + timing["batch8"] / 8


def relocate_manifest(manifest: dict[str, Any], src_dir: Path, dst_dir: Path) -> dict[str, Any]:
    """The same manifest with every relative path rewritten for a copy living in ``dst_dir``."""

    def fix(rel: str) -> str:
        return os.path.relpath((src_dir / rel).resolve(), dst_dir.resolve())

    out: dict[str, Any] = json.loads(json.dumps(manifest))
    out["preferred"] = fix(out["preferred"])
    for entry in out["files"].values():
        entry["path"] = fix(entry["path"])
        if "arrays" in entry:  # the gate's statistics beside its thresholds
            entry["arrays"]["path"] = fix(entry["arrays"]["path"])
    if out.get("triton"):
        out["triton"]["path"] = fix(out["triton"]["path"])
    return out


def best_attempt(attempts: list[dict[str, Any]]) -> int:
    """Index of the INT8 attempt to keep: the first that passed its gates, else the one that
    agreed best with FP32 (the earlier on a tie)."""
    if not attempts:
        raise ValueError("no INT8 attempts to choose from")
    for i, attempt in enumerate(attempts):
        if attempt["passed"]:
            return i
    return max(range(len(attempts)), key=lambda i: (attempts[i]["top1_agreement"], -i))


def build(
    source: Path,
    out_dir: Path,
    overrides: SpecOverrides | None = None,
    images_dir: Path | None = None,
    split_csv: Path | None = None,
    quant: QuantConfig | None = None,
    layout: Layout = "auto",
    opset: int = DEFAULT_OPSET,
    triton_repo: Path | None = None,
    extra_manifests: tuple[Path, ...] = (),
    max_retries: int = 2,
    fallback_16bit: bool = True,
    latency_rounds: int = 21,
) -> dict[str, Any]:
    """Convert, quantise, verify (retrying with divergent nodes excluded), time, and record it.

    INT8 attempts are scored on the val split of ``split_csv``; only the attempt kept (the first
    to pass, else the best-agreeing) is then evaluated on test, once, for the manifest.
    Raises ``GateError`` when FP32 ONNX disagrees with Keras; an INT8 model that fails its
    gates is kept on disk but never marked preferred, and the manifest says so.
    """
    from conversion.images import DEFAULT_IMAGES, DEFAULT_SPLIT

    images_dir = images_dir or DEFAULT_IMAGES
    split_csv = split_csv or DEFAULT_SPLIT
    overrides = overrides or SpecOverrides()
    quant = quant or QuantConfig()
    stored = check_hdf5(source) or {}
    name = overrides.name or stored.get("name") or source.stem
    fp32_path, int8_path = out_dir / f"{name}.onnx", out_dir / f"{name}_int8.onnx"
    manifest_path = out_dir / "manifest.json"

    fp32_spec = convert(source, fp32_path, dataclasses.replace(overrides, name=name), layout, opset)
    # Before quantising, so every file of this model has the features the gate reads.
    ensure_features(fp32_path)
    # attempts are scored on val; test only measures the file finally kept, once
    val_samples = read_labels(split_csv, images_dir, "val")
    test_samples = read_labels(split_csv, images_dir, "test")
    calib = calibration_paths(images_dir, split_csv, quant.calibration_count, quant.seed)

    attempts: list[dict[str, Any]] = []
    candidates: list[tuple[Path, ModelSpec]] = []
    plan = [quant]
    with tempfile.TemporaryDirectory(prefix="build-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        while plan:
            config = plan.pop(0)
            candidate = Path(tmp) / f"int8-{len(attempts)}.onnx"
            spec = quantize(fp32_path, candidate, calib, config, pre_processed=pre)
            report = verify(
                fp32_path,
                candidate,
                source if not attempts else None,  # fail fast, before minutes of retries
                samples=val_samples,
                debug_model=pre,
            )
            if not attempts and report.failed("keras_fp32"):
                raise GateError("FP32 ONNX disagrees with Keras:\n" + report.render())
            candidates.append((candidate, spec))
            attempts.append(
                {
                    **{k: v for k, v in config.describe().items() if k != "extra_options"},
                    "passed": not report.failed("fp32_int8"),
                    "failed_gates": [g.name for g in report.failed("fp32_int8")],
                    "top1_agreement": report.parity["fp32_int8"]["top1_agreement"],
                }
            )
            log.info("INT8 attempt %d (val split):\n%s", len(attempts), report.render())
            if not report.failed("fp32_int8"):
                break
            retries = sum(1 for a in attempts if a["activation_type"] == config.activation_type)
            new = [
                d["node"]
                for d in report.divergent
                if d["node"] and d["node"] not in config.exclude_nodes
            ]
            # the 16-bit fallback gets one try: each attempt costs minutes on a real backbone
            if new and retries <= max_retries and config.activation_type != "uint16":
                # keep the most divergent nodes in FP32 and try again
                plan.append(
                    dataclasses.replace(config, exclude_nodes=(*config.exclude_nodes, *new[:2]))
                )
            elif fallback_16bit and config.activation_type != "uint16":
                # last resort: 16-bit activations (A16W8) are accurate but rarely faster. With
                # 16-bit activations neither the logit range (keep_last_fp32) nor U8S8
                # saturation (reduce_range) needs working around, and full 8-bit weights are
                # what lifted the upstream model over the gates.
                plan.append(
                    dataclasses.replace(
                        quant, activation_type="uint16", reduce_range=False, keep_last_fp32=False
                    )
                )
        chosen = best_attempt(attempts)
        candidate, int8_spec = candidates[chosen]
        with atomic_path(int8_path) as staged:
            shutil.copyfile(candidate, staged)
    log.info("keeping INT8 attempt %d of %d", chosen + 1, len(attempts))

    report = verify(fp32_path, int8_path, source, samples=test_samples, diagnose=False)
    if report.failed("keras_fp32"):
        raise GateError("FP32 ONNX disagrees with Keras:\n" + report.render())
    log.info("kept INT8 file on the test split:\n%s", report.render())
    # a file that failed on val is never preferred, however it fares on test
    int8_ok = attempts[chosen]["passed"] and not report.failed("fp32_int8")

    latency = measure_latency(
        {"fp32": (fp32_path, fp32_spec), "int8": (int8_path, int8_spec)}, rounds=latency_rounds
    )
    speedup = {b: round(latency["fp32"][b] / latency["int8"][b], 3) for b in latency["fp32"]}
    int8_faster = per_image_ms(latency["int8"]) < per_image_ms(latency["fp32"])
    preferred, pref_spec = (
        (int8_path, int8_spec) if int8_ok and int8_faster else (fp32_path, fp32_spec)
    )
    reason = (
        "INT8 passes the gates and is faster"
        if preferred == int8_path
        else (
            "INT8 fails the accuracy gates" if not int8_ok else "INT8 is not faster than FP32 here"
        )
    )
    log.info(
        "latency (ms, 1 thread): %s; INT8 speed-up %s; preferred %s (%s)",
        latency,
        speedup,
        preferred.name,
        reason,
    )

    manifest: dict[str, Any] = {
        "schema": 1,
        "name": name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "preferred": os.path.relpath(preferred, out_dir),
        "preferred_reason": reason,
        "source": {"file": source.name, "sha256": fp32_spec.source_sha256},
        "files": {
            "fp32": file_entry(fp32_path, out_dir, fp32_spec) | {"gates_passed": True},
            "int8": file_entry(int8_path, out_dir, int8_spec) | {"gates_passed": int8_ok},
        },
        "opset": opset,
        "spec": {k: v for k, v in dataclasses.asdict(fp32_spec).items() if k != "extra"},
        "layout": {
            "chosen": fp32_spec.layout,
            "how": fp32_spec.extra.get("layout_choice"),
            "latency_ms_1thread": fp32_spec.extra.get("layout_latency_ms"),
        },
        "versions": versions(),
        "quantization": int8_spec.extra["quantization"]
        | {
            "attempts": attempts,
            # attempts are scored on this split; chosen_attempt indexes "attempts"
            "selection": {"split": "val", "images": len(val_samples), "chosen_attempt": chosen},
            "calibration_images": len(calib),
        },
        "parity": {"images": report.images, "split": "test", **report.parity},
        "gates": [
            {**dataclasses.asdict(g), "passed": g.passed}
            for g in [*_gates(report, "keras_fp32"), *_gates(report, "fp32_int8")]
        ],
        "accuracy": {"split": "test", **report.metrics},
        "latency_ms_1thread": latency,
        "int8_speedup": speedup,
        "int8_speedup_targets": SPEEDUP_TARGETS,
        "int8_speedup_targets_met": all(speedup[b] >= t for b, t in SPEEDUP_TARGETS.items()),
    }
    if triton_repo is not None:
        target = export_triton(preferred, pref_spec, triton_repo)
        manifest["triton"] = {"path": os.path.relpath(target, out_dir), "model": preferred.name}
    text = json.dumps(manifest, indent=2)
    write_text(manifest_path, text + "\n")
    # The gate is refitted with every build, so a retrained model never keeps an old one.
    gate_doc = fit_gate(fp32_path, images_dir, split_csv)
    record_in_manifest(manifest_path, fp32_path, gate_doc)
    manifest = json.loads(manifest_path.read_text())
    for extra in extra_manifests:
        moved = relocate_manifest(manifest, out_dir, extra.parent)
        write_text(extra, json.dumps(moved, indent=2) + "\n")
    return manifest


def _gates(report: VerifyReport, prefix: str) -> list[Any]:
    return [g for g in report.gates if g.name.startswith(prefix)]
