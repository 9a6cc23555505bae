"""Compare candidate backbones by validation BMA and single-thread ONNX latency."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from app.inference.spec import ModelSpec
from conversion.convert import convert
from conversion.runtime import measure_latency


def compare(models: list[Path], out: Path) -> list[dict[str, Any]]:
    """Convert each HDF5 to FP32 ONNX and time them interleaved on one thread.

    Each model's validation figures come from the ``.training.json`` its training run wrote.
    """
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_files: dict[str, tuple[Path, ModelSpec]] = {}
        for h5 in models:
            target = Path(tmp) / f"{h5.stem}.onnx"
            onnx_files[h5.stem] = (target, convert(h5, target, layout="NHWC"))
        timings = measure_latency({k: v for k, v in onnx_files.items()}, rounds=31)
        sizes = {k: path.stat().st_size for k, (path, _) in onnx_files.items()}
    for h5 in models:
        summary = json.loads(h5.with_suffix(".training.json").read_text())
        cfg = summary["config"]
        rows.append(
            {
                "model": h5.stem,
                "arch": cfg["arch"],
                "input": f"{cfg['size'][0]}x{cfg['size'][1]}",
                "pretrained": cfg["weights"] is not None and cfg["weights"] != "None",
                "epochs": cfg["warmup_epochs"] + cfg["epochs"],
                "best_val_bma": summary["best_val_bma"],
                "val_bma_by_epoch": [round(h["val_bma"], 4) for h in summary["history"]],
                "train_minutes": round(summary["train_minutes"], 1),
                "onnx_fp32_ms_batch1": timings[h5.stem]["batch1"],
                "onnx_fp32_ms_batch8": timings[h5.stem]["batch8"],
                "onnx_bytes": sizes[h5.stem],
            }
        )
    out.write_text(json.dumps(rows, indent=2))
    return rows
