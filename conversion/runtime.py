"""Running models (Keras and onnxruntime) and timing them on one thread."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from app.inference.spec import ModelSpec

if TYPE_CHECKING:
    import keras


def session(model: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def predict_onnx(
    model: Path | bytes | ort.InferenceSession, x: np.ndarray, batch: int = 64
) -> np.ndarray:
    sess = model if isinstance(model, ort.InferenceSession) else session(model, threads=2)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)


def predict_keras(model: keras.Model, x: np.ndarray, batch: int = 64) -> np.ndarray:
    outs = [np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)


def random_input(spec: ModelSpec, batch: int, seed: int = 0) -> np.ndarray:
    h, w = spec.input_height, spec.input_width
    shape = (batch, 3, h, w) if spec.layout == "NCHW" else (batch, h, w, 3)
    x = np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)
    return x * np.float32(spec.input_scale) + np.float32(spec.input_offset)


def measure_latency(
    models: dict[str, tuple[Path | bytes, ModelSpec]],
    batch_sizes: tuple[int, ...] = (1, 8),
    rounds: int = 15,
    min_block_s: float = 0.02,
) -> dict[str, dict[str, float]]:
    """Median milliseconds per call, single-threaded, the models interleaved round by round.

    Interleaving spreads background load (this machine is shared) evenly over the candidates,
    so ratios stay honest even when absolute numbers drift.
    """
    sessions = {k: (session(m, threads=1), spec) for k, (m, spec) in models.items()}
    inputs = {
        (k, b): random_input(spec, b) for k, (_, spec) in sessions.items() for b in batch_sizes
    }
    reps: dict[tuple[str, int], int] = {}
    for (k, b), x in inputs.items():  # warm up, then size blocks to ~min_block_s each
        sess = sessions[k][0]
        name = sess.get_inputs()[0].name
        for _ in range(3):
            sess.run(None, {name: x})
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        reps[(k, b)] = max(1, int(min_block_s / max(time.perf_counter() - t0, 1e-6)))
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in inputs}
    for _ in tqdm(range(rounds), desc="latency", unit="round", leave=False):
        for (k, b), x in inputs.items():
            sess = sessions[k][0]
            feed = {sess.get_inputs()[0].name: x}
            n = reps[(k, b)]
            t0 = time.perf_counter()
            for _ in range(n):
                sess.run(None, feed)
            samples[(k, b)].append((time.perf_counter() - t0) * 1000 / n)
    result: dict[str, dict[str, float]] = {k: {} for k in models}
    for (k, b), values in samples.items():
        result[k][f"batch{b}"] = round(statistics.median(values), 4)
    return result
