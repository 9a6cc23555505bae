"""CPU vs CUDA execution provider, side by side in one process: `python -m benchmarks.providers`.

Not part of `python -m benchmarks run` (this machine has no GPU); run it on a CUDA box with the
`gpu` extra. Inputs are the committed 600x450 fixtures, preprocessed once, so only
``session.run`` is timed (host-to-device copies included, as the server pays them). Needs only
numpy, OpenCV and onnxruntime, so it runs without the web stack.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.config import default_model_path, usable_cpus
from app.inference.classifier import Classifier
from app.inference.preprocess import preprocess
from benchmarks.stats import Figure

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "images"


def time_runs(classifier: Classifier, batch: np.ndarray, runs: int, warmup: int = 10) -> Figure:
    for _ in range(warmup):
        classifier.run(batch)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        classifier.run(batch)
        samples.append((time.perf_counter() - t0) * 1000)
    return Figure.of(samples, "ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.providers", description=__doc__)
    p.add_argument("--model", type=Path, default=None, help="default: the preferred bundled model")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    model = args.model or default_model_path()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("no CUDAExecutionProvider in this onnxruntime: nothing to compare", file=sys.stderr)
        return 2
    threads = usable_cpus()
    engines = {"cpu": Classifier(model, "cpu", threads=threads), "cuda": Classifier(model, "cuda")}
    images = sorted(FIXTURES.glob("*.jpg"))
    tensors = np.stack([preprocess(p.read_bytes(), engines["cpu"].spec) for p in images])
    out: dict[str, object] = {
        "model": str(model),
        "onnxruntime": ort.__version__,
        "cpu_threads": threads,
        "providers": {k: c.providers for k, c in engines.items()},
        "figures": {},
    }
    figures: dict[str, dict[str, float]] = {}
    print(f"{'batch':>5} {'engine':>6} {'p50 ms':>8} {'p95 ms':>8} {'ms/img':>8}")
    for size in (int(b) for b in args.batches.split(",")):
        batch = np.resize(tensors, (size, *tensors.shape[1:])).astype(np.float32)
        for name, classifier in engines.items():
            fig = time_runs(classifier, batch, args.runs)
            figures[f"b{size}/{name}"] = fig.as_dict()
            print(
                f"{size:>5} {name:>6} {fig.median:>8.3f} {fig.p95:>8.3f} {fig.median / size:>8.3f}"
            )
        speedup = figures[f"b{size}/cpu"]["median"] / figures[f"b{size}/cuda"]["median"]
        print(f"      cuda speed-up over cpu at batch {size}: x{speedup:.2f}")
    out["figures"] = figures
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
