"""Preprocess suite: the serving OpenCV path, with and without reduced JPEG decoding, against
the upstream path (PIL via ``keras.utils.load_img`` + ``img_to_array``)."""

from __future__ import annotations

import argparse
import io
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from app.inference.preprocess import preprocess
from app.inference.spec import ModelSpec
from benchmarks.artifacts import ModelSet
from benchmarks.images import Sample, phone_photo, upload_images
from benchmarks.markdown import figures, fmt, table
from benchmarks.results import SuiteResult
from benchmarks.stats import Figure, ratio
from benchmarks.suite import Suite

log = logging.getLogger(__name__)

Path_ = Callable[[bytes], np.ndarray]


def _paths(spec: ModelSpec, suite: SuiteResult) -> dict[str, Path_]:
    w, h = spec.input_size
    paths: dict[str, Path_] = {
        "opencv_reduced": lambda data: preprocess(data, spec, reduced=True),
        "opencv_full": lambda data: preprocess(data, spec, reduced=False),
    }
    try:
        from keras.utils import img_to_array, load_img
    except ImportError as exc:
        suite.skip(
            "upstream_keras", f"Keras not installed ({exc.name}); the upstream path needs it"
        )
        return paths
    scale, offset = np.float32(spec.input_scale), np.float32(spec.input_offset)

    def upstream(data: bytes) -> np.ndarray:
        # As upstream: PIL decode, nearest-neighbour resize to the model size, no crop.
        x = np.asarray(img_to_array(load_img(io.BytesIO(data), target_size=(h, w))))
        return x * scale + offset if (scale != 1 or offset != 0) else x

    paths["upstream_keras"] = upstream
    return paths


def _to_nhwc(x: np.ndarray, spec: ModelSpec) -> np.ndarray:
    return x.transpose(1, 2, 0) if spec.layout == "NCHW" else x


def preprocess_suite(
    models: ModelSet, quick: bool = False, runs: int | None = None, large_runs: int | None = None
) -> SuiteResult:
    """Time bytes -> model tensor on 600x450 uploads and on a generated 12 MP phone photo."""
    suite = SuiteResult("preprocess", quick)
    cv2.setNumThreads(1)  # as the server does: cores are spent on concurrent requests
    spec = models.spec()
    uploads, source = upload_images()
    large = phone_photo(uploads[0].data)
    runs = runs or (20 if quick else 200)
    large_runs = large_runs or (3 if quick else 30)
    cap = 30.0 if quick else 240.0
    suite.params = {
        "model_input": f"{spec.input_width}x{spec.input_height}",
        "uploads": f"{len(uploads)} JPEGs 600x450 from {source}",
        "large": f"{large.name}, {len(large.data) / 1e6:.1f} MB",
        "runs_600x450": runs,
        "runs_12mp": large_runs,
        "time_cap_s_per_input": cap,
        "opencv_threads": 1,
        "upstream_input": "BytesIO (no disk write), so both paths start from the same bytes",
    }
    paths = _paths(spec, suite)
    for group, images, n in (("600x450", uploads, runs), ("12mp", [large], large_runs)):
        samples = _interleaved(paths, images, n, f"preprocess {group}", cap)
        for name, values in samples.items():
            suite.add_samples(f"{group}/{name}/latency", values, "ms")
        med = {name: float(np.median(v)) for name, v in samples.items()}
        suite.add(
            f"{group}/reduced_decode_speedup",
            Figure.value(ratio(med["opencv_full"], med["opencv_reduced"]), "x"),
        )
        if "upstream_keras" in med:
            suite.add(
                f"{group}/opencv_reduced_speedup_vs_upstream",
                Figure.value(ratio(med["upstream_keras"], med["opencv_reduced"]), "x"),
            )
        _fidelity(suite, group, paths, images, spec)
    _explanation_cost(suite, models, uploads, runs, cap)
    _gate_cost(suite, models, uploads, runs, cap)
    return suite


def _gate_cost(
    suite: SuiteResult, models: ModelSet, uploads: list[Sample], runs: int, cap: float
) -> None:
    """A prediction through the intended-use gate against the same prediction without it,
    interleaved, in process, one thread: the gated path decodes, measures the quality checks,
    resizes, runs the model with its features output and scores them; the other decodes,
    resizes and runs the model's probabilities only. Their difference is the gate's cost."""
    from app.config import Settings
    from app.inference.classifier import Classifier
    from app.inference.service import InferenceService, load_gate

    serving = models.serving or models.fp32
    if serving is None:
        suite.skip("600x450/predict_gated", "no ONNX model to serve")
        return
    plain = Classifier(serving, "cpu", threads=1)
    gated = Classifier(serving, "cpu", threads=1)
    settings = Settings(model_path=serving, ort_threads=1)
    service = InferenceService(gated, settings, gate=load_gate(settings, gated))
    spec = plain.spec

    def with_gate(data: bytes) -> np.ndarray:
        tensor, _, result = service.prepare(data, override=True)  # measure, never refuse
        row: np.ndarray = gated.run(tensor[None])[0]
        service.gate.check_distribution(result, gated.distribution_score(row))
        return row

    paths: dict[str, Path_] = {
        "predict_plain": lambda data: plain.run(preprocess(data, spec)[None]),
        "predict_gated": with_gate,
    }
    samples = _interleaved(paths, uploads, runs, "gate vs no gate 600x450", cap)
    for name, values in samples.items():
        suite.add_samples(f"600x450/{name}/latency", values, "ms")
    med = {name: float(np.median(v)) for name, v in samples.items()}
    # Paired within each round (same image, back to back): the machine's drift falls on both.
    paired = np.subtract(samples["predict_gated"], samples["predict_plain"])
    suite.add("600x450/gate_cost_ms", Figure.value(float(np.median(paired)), "ms"))
    suite.add(
        "600x450/gate_cost_vs_predict",
        Figure.value(ratio(med["predict_gated"], med["predict_plain"]), "x"),
    )
    suite.params["gate"] = service.gate.mode


def _explanation_cost(
    suite: SuiteResult, models: ModelSet, uploads: list[Sample], runs: int, cap: float
) -> None:
    """A Grad-CAM explanation against a prediction of the same upload, interleaved: both
    decode, preprocess and run the model once; the explanation also decodes at full size for
    display and draws the overlay. Measured in process, one thread, as the server runs them."""
    from app.inference.classifier import Classifier
    from app.inference.explain import Explainer, cam_model_path

    def skip(reason: str) -> None:
        for name in ("predict", "explain"):
            suite.skip(f"600x450/{name}", reason)

    serving = models.serving or models.fp32
    if serving is None:
        skip("no ONNX model to serve")
        return
    classifier = Classifier(serving, "cpu", threads=1)
    cam = cam_model_path(serving, classifier.spec)
    if not cam.is_file():
        skip(f"no CAM model at {cam} (python -m conversion cam)")
        return
    explainer = Explainer(cam, classifier.spec)
    spec = classifier.spec
    label = spec.labels[0]
    paths: dict[str, Path_] = {
        "predict": lambda data: classifier.run(preprocess(data, spec)[None]),
        "explain": lambda data: np.frombuffer(explainer.explain(data, label).png, np.uint8),
    }
    samples = _interleaved(paths, uploads, runs, "explain vs predict 600x450", cap)
    for name, values in samples.items():
        suite.add_samples(f"600x450/{name}/latency", values, "ms")
    med = {name: float(np.median(v)) for name, v in samples.items()}
    suite.add(
        "600x450/explain_cost_vs_predict", Figure.value(ratio(med["explain"], med["predict"]), "x")
    )


def _interleaved(
    paths: dict[str, Path_], images: list[Sample], runs: int, desc: str, time_cap_s: float
) -> dict[str, list[float]]:
    names = list(paths)
    for name in names:  # warm-up: first calls pay for imports and allocator growth
        paths[name](images[0].data)
    samples: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(0)
    deadline = time.monotonic() + time_cap_s
    for i in tqdm(range(runs), desc=desc, unit="round", mininterval=1.0):
        if time.monotonic() > deadline:
            log.warning("%s: time cap %.0f s reached after %d rounds", desc, time_cap_s, i)
            break
        data = images[i % len(images)].data
        rng.shuffle(names)
        for name in names:
            start = time.perf_counter()
            paths[name](data)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def _fidelity(
    suite: SuiteResult, group: str, paths: dict[str, Path_], images: list[Sample], spec: ModelSpec
) -> None:
    """Mean absolute pixel difference to the full-decode path, in 0-255 grey levels."""
    scale = spec.input_scale or 1.0
    diffs: dict[str, list[float]] = {n: [] for n in paths if n != "opencv_full"}
    for sample in images:
        ref = _to_nhwc(paths["opencv_full"](sample.data), spec)
        for name in diffs:
            out = paths[name](sample.data)
            out = _to_nhwc(out, spec) if name.startswith("opencv") else out
            diffs[name].append(float(np.mean(np.abs(out - ref))) / scale)
    for name, values in diffs.items():
        suite.add(f"{group}/{name}/mean_abs_diff_vs_full", Figure.of(values, "grey levels"))


# RESULTS.md section and targets (benchmarks.suite.Suite)


def _preprocess_section(run: dict[str, Any]) -> list[str]:
    figs = figures(run, "preprocess")
    if not figs:
        return ["_Preprocess suite not run._", ""]
    params = run["suites"]["preprocess"].get("params", {})
    rows = []
    for group in ("600x450", "12mp"):
        for path in ("opencv_reduced", "opencv_full", "upstream_keras"):
            lat = figs.get(f"{group}/{path}/latency")
            if not lat:
                continue
            diff = figs.get(f"{group}/{path}/mean_abs_diff_vs_full", {}).get("median")
            rows.append(
                [
                    group,
                    f"`{path}`",
                    fmt(lat["median"]),
                    fmt(lat["p95"]),
                    fmt(lat["p99"]),
                    str(lat["n"]),
                    "0 (reference)" if path == "opencv_full" else fmt(diff),
                ]
            )
    explain_rows = [
        [f"`{path}`", fmt(lat["median"]), fmt(lat["p95"]), str(lat["n"])]
        for path in ("predict", "explain")
        if (lat := figs.get(f"600x450/{path}/latency"))
    ]
    cost = figs.get("600x450/explain_cost_vs_predict", {}).get("median")
    explain_part = (
        [
            "Grad-CAM explanation against a prediction of the same 600x450 upload (decode, "
            "preprocess, one model run each; the explanation also runs the backward pass of "
            f"its class and draws the overlay), interleaved: **{fmt(cost)}×** the cost.",
            "",
            *table(["request", "p50 ms", "p95 ms", "n"], explain_rows),
        ]
        if explain_rows
        else []
    )
    ratios = [
        [k.replace("/", " "), fmt(v["median"])] for k, v in sorted(figs.items()) if "speedup" in k
    ]
    return [
        f"Bytes → model tensor at {params.get('model_input')}; uploads: {params.get('uploads')}; "
        f"large: {params.get('large')}. OpenCV on 1 thread, as in the server.",
        "",
        *table(
            [
                "input",
                "path",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "n",
                "mean abs diff vs full decode (grey levels)",
            ],
            rows,
        ),
        *table(["ratio", "×"], ratios),
        *explain_part,
        *_gate_part(figs, params),
    ]


def _gate_part(figs: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The intended-use gate's cost: a gated prediction against a plain one, paired per round."""
    cost = figs.get("600x450/gate_cost_ms", {}).get("median")
    if cost is None:
        return []
    rows = [
        [f"`{path}`", fmt(lat["median"]), fmt(lat["p95"]), str(lat["n"])]
        for path in ("predict_plain", "predict_gated")
        if (lat := figs.get(f"600x450/{path}/latency"))
    ]
    ratio = figs.get("600x450/gate_cost_vs_predict", {}).get("median")
    return [
        f"Intended-use gate ({params.get('gate')}) on the same uploads, interleaved: "
        f"**{fmt(cost)} ms** per image (median of per-round differences), **{fmt(ratio)}×** "
        "a plain prediction (target: <= 0.3 ms).",
        "",
        *table(["request", "p50 ms", "p95 ms", "n"], rows),
    ]


def _run(models: ModelSet, args: argparse.Namespace) -> SuiteResult:
    return preprocess_suite(models, args.quick, args.runs)


SUITE = Suite(
    name="preprocess",
    help="OpenCV (reduced/full decode) vs the upstream PIL path",
    run=_run,
    title="Preprocessing: OpenCV vs the upstream PIL path",
    section=_preprocess_section,
)
