"""Model suite: Keras ``predict`` and ``__call__`` against ORT FP32 and INT8, interleaved.

Each thread count runs in its own child process, because TensorFlow fixes its thread pools
when it starts and cannot be reconfigured afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.artifacts import ModelSet
from benchmarks.markdown import figures, fmt, table
from benchmarks.results import CellKey, SuiteResult
from benchmarks.stats import Figure, ratio
from benchmarks.suite import Suite
from benchmarks.targets import Verdict, check, fig

log = logging.getLogger(__name__)

ENGINES = ("keras_predict", "keras_call", "ort_fp32", "ort_int8")


def model_suite(
    models: ModelSet,
    quick: bool = False,
    threads: tuple[int, ...] = (1, 2),
    batches: tuple[int, ...] = (1, 8),
    runs: int | None = None,
    time_cap_s: float | None = None,
) -> SuiteResult:
    """Time every engine at every thread count and batch size on the same real images."""
    suite = SuiteResult("model", quick)
    if quick:  # one child, not one per thread count: each starts TensorFlow (~45 s on 2 cores)
        threads = threads[:1]
    runs = runs or (10 if quick else 200)
    warmup = 1 if quick else 10
    cap = time_cap_s or (10.0 if quick else 300.0)
    suite.params = {
        "threads": list(threads),
        "batches": list(batches),
        "timed_runs": runs,
        "warmup_runs": warmup,
        "time_cap_s_per_thread_count": cap,
        "order": "interleaved, shuffled",
    }
    if models.any_onnx is None:
        suite.skip("all", "no ONNX model found (run `python -m conversion build`)")
        return suite
    for name, path in (
        ("keras", models.keras),
        ("ort_fp32", models.fp32),
        ("ort_int8", models.int8),
    ):
        if path is None:
            suite.skip(name, f"no {name} model in the manifest or on the command line")
    config = {
        "keras": str(models.keras) if models.keras else None,
        "fp32": str(models.fp32) if models.fp32 else None,
        "int8": str(models.int8) if models.int8 else None,
        "spec_model": str(models.any_onnx),
        "batches": list(batches),
        "runs": runs,
        "warmup": warmup,
        "time_cap_s": cap,
    }
    for t in threads:
        child = _run_child({**config, "threads": t})
        for reason_key, reason in child.get("skipped", {}).items():
            suite.skip(f"t{t}/{reason_key}", reason)
        suite.notes.extend(f"t{t}: {n}" for n in child.get("notes", []))
        for key, value in child.get("parity", {}).items():
            suite.add(f"parity/{key}", Figure.value(value, "probability" if "abs" in key else "%"))
        medians: dict[tuple[int, str], float] = {}
        for key, samples in child["samples"].items():
            engine, b = key.split("/b")
            cell = CellKey(t, int(b), "latency", engine)
            fig = suite.add_samples(cell, samples, "ms")
            suite.add(
                replace(cell, quantity="per_image"), Figure.value(fig.median / int(b), "ms", fig.n)
            )
            medians[(int(b), engine)] = fig.median
        for b in batches:
            base = medians.get((b, "keras_predict"))
            for engine in ENGINES[1:]:
                if base and (b, engine) in medians:
                    suite.add(
                        CellKey(t, b, "speedup_vs_keras_predict", engine),
                        Figure.value(ratio(base, medians[(b, engine)]), "x"),
                    )
            if (b, "ort_fp32") in medians and (b, "ort_int8") in medians:
                suite.add(
                    CellKey(t, b, "int8_speedup_vs_fp32"),
                    Figure.value(ratio(medians[(b, "ort_fp32")], medians[(b, "ort_int8")]), "x"),
                )
            if (b, "keras_call") in medians and (b, "ort_fp32") in medians:
                suite.add(
                    CellKey(t, b, "speedup_vs_keras_call", "ort_fp32"),
                    Figure.value(ratio(medians[(b, "keras_call")], medians[(b, "ort_fp32")]), "x"),
                )
    return suite


def _run_child(config: dict[str, Any]) -> dict[str, Any]:
    t = int(config["threads"])
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_NUM_INTRAOP_THREADS": str(t),
        "TF_NUM_INTEROP_THREADS": str(t),
        "OMP_NUM_THREADS": str(t),
        "CUDA_VISIBLE_DEVICES": "",
    }
    code = "from benchmarks.model import child_main; child_main()"
    repo = Path(__file__).resolve().parent.parent
    timeout = float(config["time_cap_s"]) * 2 + 300  # model loading included
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(config),
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=repo,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"model suite child (threads={t}) failed with exit {proc.returncode}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def child_main() -> None:
    """Entry point of the per-thread-count child: config JSON on stdin, results JSON on stdout."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = json.loads(sys.stdin.read())
    result = measure_engines(config)
    sys.stdout.write(json.dumps(result) + "\n")


def _ort_session(path: str, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    import onnxruntime as ort

    from app.inference.spec import ModelSpec

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    spec = ModelSpec.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    name = session.get_inputs()[0].name
    nchw = spec.layout == "NCHW"

    def run(x: np.ndarray) -> np.ndarray:
        # Inputs are built NHWC; an NCHW model gets them transposed before the clock starts.
        return np.asarray(session.run(None, {name: x})[0])

    return run, "NCHW" if nchw else "NHWC"


def measure_engines(config: dict[str, Any]) -> dict[str, Any]:
    """Warm up every (engine, batch), then time them interleaved in a shuffled order."""
    from tqdm import tqdm

    from app.inference.preprocess import preprocess
    from benchmarks.artifacts import ModelSet
    from benchmarks.images import upload_images

    threads = int(config["threads"])
    batches = [int(b) for b in config["batches"]]
    spec = ModelSet(None, None, None, None, Path(config["spec_model"])).spec()
    samples_in, _ = upload_images()
    images = np.stack([preprocess(s.data, spec) for s in samples_in]).astype(np.float32)
    if spec.layout == "NCHW":  # our tensors are NHWC for Keras; convert back for ORT below
        images = images.transpose(0, 2, 3, 1)
    inputs = {b: np.ascontiguousarray(np.resize(images, (b, *images.shape[1:]))) for b in batches}
    skipped: dict[str, str] = {}
    notes: list[str] = []
    engines: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if config.get("keras"):
        try:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
            import keras

            model = keras.models.load_model(config["keras"], compile=False)
            engines["keras_predict"] = lambda x: np.asarray(model.predict(x, verbose=0))
            engines["keras_call"] = lambda x: np.asarray(model(x, training=False))
        except ImportError as exc:
            skipped["keras"] = f"TensorFlow/Keras not installed ({exc.name})"
    layouts: dict[str, str] = {}
    for engine, key in (("ort_fp32", "fp32"), ("ort_int8", "int8")):
        if config.get(key):
            engines[engine], layouts[engine] = _ort_session(config[key], threads)
    feeds = {
        (engine, b): (
            np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layouts.get(engine) == "NCHW" else x
        )
        for engine in engines
        for b, x in inputs.items()
    }
    parity = _parity(engines, feeds, batches)
    combos = [(e, b) for e in engines for b in batches]
    for combo in combos:
        for _ in range(int(config["warmup"])):
            engines[combo[0]](feeds[combo])
    samples: dict[str, list[float]] = {f"{e}/b{b}": [] for e, b in combos}
    rng = random.Random(threads)
    deadline = time.monotonic() + float(config["time_cap_s"])
    for _ in tqdm(
        range(int(config["runs"])),
        desc=f"model t={threads}",
        unit="round",
        file=sys.stderr,
        mininterval=1.0,
    ):
        rng.shuffle(combos)
        for engine, b in combos:
            x = feeds[(engine, b)]
            start = time.perf_counter()
            engines[engine](x)
            samples[f"{engine}/b{b}"].append((time.perf_counter() - start) * 1e3)
        if time.monotonic() > deadline:
            notes.append(
                f"time cap reached after {len(samples[f'{combos[0][0]}/b{combos[0][1]}'])} rounds"
            )
            break
    return {"samples": samples, "skipped": skipped, "notes": notes, "parity": parity}


def _parity(
    engines: dict[str, Callable[[np.ndarray], np.ndarray]],
    feeds: dict[tuple[str, int], np.ndarray],
    batches: list[int],
) -> dict[str, float]:
    """Agreement of the engines on the real images (the conversion gates measure this fully)."""
    b = max(batches)
    outputs = {e: engines[e](feeds[(e, b)]) for e in engines}
    out: dict[str, float] = {}
    pairs = (("ort_fp32", "keras_call"), ("ort_int8", "ort_fp32"))
    for a, ref in pairs:
        if a in outputs and ref in outputs:
            out[f"{a}_vs_{ref}/max_abs_diff"] = float(np.max(np.abs(outputs[a] - outputs[ref])))
            agree = np.mean(outputs[a].argmax(1) == outputs[ref].argmax(1)) * 100
            out[f"{a}_vs_{ref}/top1_agreement"] = float(agree)
    return out


# RESULTS.md section and targets (benchmarks.suite.Suite)


def _model_section(run: dict[str, Any]) -> list[str]:
    figs = figures(run, "model")
    if not figs:
        return ["_Model suite not run._", ""]
    params = run["suites"]["model"].get("params", {})
    rows = []
    cells = sorted(
        (
            key
            for k in figs
            if (key := CellKey.parse(k)) and key.engine and key.quantity == "latency"
        ),
        key=lambda c: (c.threads, c.batch, c.engine or ""),
    )
    for cell in cells:
        lat = figs[str(cell)]
        speed = figs.get(str(replace(cell, quantity="speedup_vs_keras_predict")), {}).get("median")
        rows.append(
            [
                str(cell.threads),
                str(cell.batch),
                f"`{cell.engine}`",
                fmt(lat["median"]),
                fmt(lat["p95"]),
                fmt(lat["p99"]),
                fmt(lat["median"] / cell.batch),
                str(lat["n"]),
                "1.00" if cell.engine == "keras_predict" else fmt(speed),
            ]
        )
    out = [
        f"Each cell: {params.get('timed_runs')} timed runs after {params.get('warmup_runs')} "
        "warm-up runs, all engines interleaved in a shuffled order. Latency per call in ms.",
        "",
        *table(
            [
                "threads",
                "batch",
                "engine",
                "p50",
                "p95",
                "p99",
                "ms/image",
                "n",
                "× vs `model.predict`",
            ],
            rows,
        ),
    ]
    int8 = [
        [str(key.threads), str(key.batch), fmt(v["median"])]
        for k, v in sorted(figs.items())
        if (key := CellKey.parse(k)) and key.quantity == "int8_speedup_vs_fp32"
    ]
    if int8:
        out += [
            "INT8 speed-up over FP32 (FP32 p50 / INT8 p50):",
            "",
            *table(["threads", "batch", "INT8 / FP32"], int8),
        ]
    parity = [
        [k.removeprefix("parity/"), fmt(v["median"], 6)]
        for k, v in sorted(figs.items())
        if k.startswith("parity/")
    ]
    if parity:
        out += [
            "Agreement on the benchmark images (the conversion gates check this fully):",
            "",
            *table(["pair / measure", "value"], parity),
        ]
    return out


def _targets(run: dict[str, Any]) -> list[Verdict]:
    out = []
    for batch, want in ((1, 1.5), (8, 1.8)):
        speed = fig(run, "model", CellKey(1, batch, "int8_speedup_vs_fp32"))
        out.append(
            check(
                f"INT8 vs FP32 speed-up, batch {batch}, 1 thread",
                "conversion #4",
                f"≥ {want}×",
                speed,
                speed is not None and speed >= want,
                "{:.2f}×",
            )
        )
    return out


def _run(models: ModelSet, args: argparse.Namespace) -> SuiteResult:
    return model_suite(models, args.quick, tuple(args.threads), tuple(args.batches), args.runs)


SUITE = Suite(
    name="model",
    help="Keras predict/call vs ORT FP32/INT8, 1-2 threads, batch 1 and 8",
    run=_run,
    title="Model: Keras vs ONNX Runtime FP32 and INT8",
    section=_model_section,
    targets=_targets,
)
