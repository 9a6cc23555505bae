"""What onnxruntime's CPU memory arena costs and holds: time per image and resident memory.

``python -m benchmarks.arena [--rounds 5] [--json PATH]``

After 1,000 clients the server stayed 141-156 MB above its pre-burst RSS once idle (issue 16):
the arena grows to the largest micro-batch it has run and never gives the memory back. Each
configuration runs in a fresh process, in turn, ``--rounds`` times, on the shipped model with
the server's session options (one intra-op thread):

- ``arena``: onnxruntime's default, the arena on;
- ``no-arena``: ``SessionOptions.enable_cpu_mem_arena = False`` (plain malloc and free);
- ``shrink``: the arena on, and the run option ``memory.enable_memory_arena_shrinkage =
  cpu:0`` on every run (the arena frees what a run added when it ends);
- ``shrink-when-idle``: the arena on, runs as ``arena``; before the trim, one batch-1 run with
  that option, as the server's idle trimmer does (``Classifier.release_memory``).

Reported per configuration: ms per image at batch 1 and batch 8 (the median of each process's
median), and RSS after loading, after batches of 1 to 32 (the largest the batcher makes) and
after ``malloc_trim(0)`` (what the server's idle trimmer gets back).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ("arena", "no-arena", "shrink", "shrink-when-idle")
BATCHES = (1, 2, 4, 8, 16, 32)


def _rss_mb() -> float:
    return round(float(psutil.Process().memory_info().rss) / 2**20, 1)


def _one(config: str, model: str, out: Connection) -> None:
    """In a fresh process: load, grow, time and trim one configuration."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = config != "no-arena"
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    run_options = ort.RunOptions()
    if config == "shrink":
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    source = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in source.shape]
    rng = np.random.default_rng(0)
    names = [o.name for o in session.get_outputs()]

    def run(batch: int) -> float:
        x = rng.random((batch, *shape[1:]), dtype=np.float32)
        t0 = time.perf_counter()
        session.run(names, {source.name: x}, run_options)
        return time.perf_counter() - t0

    run(1)
    loaded = _rss_mb()
    for batch in BATCHES:
        run(batch)
    grown = _rss_mb()
    per_image = {}
    for batch in (1, 8):
        times = [run(batch) / batch for _ in range(max(10, 160 // batch))]
        per_image[str(batch)] = round(statistics.median(times) * 1000, 3)
    if config == "shrink-when-idle":
        idle = ort.RunOptions()
        idle.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        session.run(names, {source.name: rng.random((1, *shape[1:]), dtype=np.float32)}, idle)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    out.send(
        {
            "config": config,
            "ms_per_image": per_image,
            "rss_loaded_mb": loaded,
            "rss_after_batches_mb": grown,
            "rss_after_trim_mb": _rss_mb(),
        }
    )
    out.close()


def measure(rounds: int, model: Path) -> dict[str, Any]:
    from benchmarks.machine import cpu_info, git_state, load_average

    spawn = multiprocessing.get_context("spawn")
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    load_before = load_average()
    for _ in range(rounds):
        for config in CONFIGS:  # interleaved: the machine's noise falls on each alike
            receiver, sender = spawn.Pipe(duplex=False)
            process = spawn.Process(target=_one, args=(config, str(model), sender))
            process.start()
            runs[config].append(receiver.recv())
            process.join(30)
    summary = {}
    for config, results in runs.items():

        def median(key: str, sub: str | None = None, rs: list[dict[str, Any]] = results) -> float:
            values = [float(r[key][sub] if sub else r[key]) for r in rs]
            return round(statistics.median(values), 3)

        summary[config] = {
            "ms_per_image_batch1": median("ms_per_image", "1"),
            "ms_per_image_batch8": median("ms_per_image", "8"),
            "rss_loaded_mb": median("rss_loaded_mb"),
            "rss_after_batches_mb": median("rss_after_batches_mb"),
            "rss_after_trim_mb": median("rss_after_trim_mb"),
        }
    return {
        "model": str(model.relative_to(REPO)) if model.is_relative_to(REPO) else str(model),
        "rounds": rounds,
        "summary": summary,
        "runs": runs,
        "cpu": cpu_info(),
        "git": git_state(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.arena", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "skin_lesion.onnx")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = measure(args.rounds, args.model)
    text = json.dumps(result, indent=2)
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
