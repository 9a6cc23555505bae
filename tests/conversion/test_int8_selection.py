"""``build``'s INT8 attempts are scored on val; test sees only the chosen file, once.

Quantisation and verification are replaced by scripted fakes, so this runs in a second and
needs no TensorFlow: what is checked is which split each decision sees and which file is kept.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

import conversion.build as build_module
from app.inference.spec import ModelSpec
from conversion.build import best_attempt, build
from conversion.images import Sample
from conversion.quantize import QuantConfig
from conversion.verify import Gate, VerifyReport


def _attempt(agreement: float, passed: bool = False) -> dict[str, Any]:
    return {"top1_agreement": agreement, "passed": passed}


def test_best_attempt_keeps_first_passing_else_best_agreeing() -> None:
    assert best_attempt([_attempt(0.90), _attempt(0.95), _attempt(0.93)]) == 1
    assert best_attempt([_attempt(0.90), _attempt(0.99, True), _attempt(0.995, True)]) == 1
    assert best_attempt([_attempt(0.95), _attempt(0.95)]) == 0  # a tie keeps the earlier
    with pytest.raises(ValueError):
        best_attempt([])


def test_build_selects_int8_on_val_and_evaluates_only_the_choice_on_test(
    tmp_path: Path,
    split_csv: Path,
    fixture_images: list[tuple[Path, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts = {f"{r['image_id']}.jpg": r["split"] for r in csv.DictReader(split_csv.open(newline=""))}
    # val agreement of each attempt: U8S8, U8S8 with 2 nodes excluded, then A16W8; none passes
    val_agreement = [0.90, 0.95, 0.93]
    calls: list[dict[str, Any]] = []
    spec = ModelSpec(name="tiny", extra={"precision": "fp32"})

    def fake_convert(source: Path, output: Path, *args: Any, **kwargs: Any) -> ModelSpec:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"fp32")
        return spec

    def fake_quantize(
        fp32: Path, output: Path, calib: Any, config: QuantConfig, **kwargs: Any
    ) -> ModelSpec:
        n = sum(1 for c in calls if c["int8"] is not None)
        output.write_text(f"attempt {n} {config.activation_type}")
        return ModelSpec(
            name="tiny", extra={"precision": "int8", "quantization": config.describe()}
        )

    def fake_verify(
        fp32: Path,
        int8: Path | None = None,
        keras_h5: Path | None = None,
        *,
        samples: list[Sample],
        **kwargs: Any,
    ) -> VerifyReport:
        (split,) = {parts[s.path.name] for s in samples}
        file = int8.read_text() if int8 is not None else None
        calls.append({"split": split, "int8": file, "keras": keras_h5 is not None})
        top1 = val_agreement[int(file.split()[1])] if split == "val" else 0.99
        report = VerifyReport(images=len(samples))
        report.parity["fp32_int8"] = {"top1_agreement": top1, "max_abs_prob_diff": 0.1}
        report.gates.append(Gate("fp32_int8.top1_agreement", top1, 0.98, "min"))
        if keras_h5 is not None:
            report.parity["keras_fp32"] = {"top1_agreement": 1.0, "max_abs_prob_diff": 0.0}
            report.gates.append(Gate("keras_fp32.top1_agreement", 1.0, 1.0, "min"))
            report.metrics["keras"] = {"bma": 0.5, "per_class": {}}
        report.metrics |= {k: {"bma": 0.5, "per_class": {}} for k in ("fp32", "int8")}
        report.divergent = [
            {"tensor": f"t{i}", "sqnr_db": 1.0, "node": f"node{len(calls)}.{i}"} for i in (1, 2)
        ]
        return report

    monkeypatch.setattr(build_module, "check_hdf5", lambda source: {})
    monkeypatch.setattr(build_module, "convert", fake_convert)
    monkeypatch.setattr(build_module, "quantize", fake_quantize)
    monkeypatch.setattr(build_module, "verify", fake_verify)
    # the gate is fitted on real features (tests/conversion/test_conversion_pipeline.py)
    monkeypatch.setattr(build_module, "ensure_features", lambda path: False)
    monkeypatch.setattr(build_module, "fit_gate", lambda *args, **kwargs: {})
    monkeypatch.setattr(build_module, "record_in_manifest", lambda *args, **kwargs: None)
    monkeypatch.setattr(
        build_module,
        "measure_latency",
        lambda models, rounds: {k: {"batch1": 1.0, "batch8": 8.0} for k in models},
    )
    monkeypatch.setattr(
        build_module,
        "file_entry",
        lambda path, base, s: {"path": path.name, "precision": s.extra.get("precision")},
    )

    out = tmp_path / "models"
    manifest = build(
        tmp_path / "tiny.h5",
        out,
        images_dir=fixture_images[0][0].parent,
        split_csv=split_csv,
        quant=QuantConfig(calibration_count=4),
        max_retries=1,
        fallback_16bit=True,
    )

    attempts, final = calls[:-1], calls[-1]
    assert [c["split"] for c in attempts] == ["val"] * 3
    assert [c["int8"] for c in attempts] == [
        "attempt 0 uint8",
        "attempt 1 uint8",
        "attempt 2 uint16",
    ]
    # the best-agreeing attempt is kept, not the last one tried
    assert (out / "tiny_int8.onnx").read_text() == "attempt 1 uint8"
    assert final == {"split": "test", "int8": "attempt 1 uint8", "keras": True}
    q = manifest["quantization"]
    assert q["activation_type"] == "uint8" and len(q["exclude_nodes"]) == 2
    assert q["selection"] == {"split": "val", "images": 5, "chosen_attempt": 1}
    assert [a["top1_agreement"] for a in q["attempts"]] == val_agreement
    # test agreement passes, but the file was chosen without passing on val: never preferred
    assert manifest["parity"]["split"] == "test"
    assert manifest["parity"]["fp32_int8"]["top1_agreement"] == 0.99
    assert manifest["files"]["int8"]["gates_passed"] is False
    assert manifest["preferred"] == "tiny.onnx"
