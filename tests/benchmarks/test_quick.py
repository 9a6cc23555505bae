"""``python -m benchmarks run --quick`` end to end: the result file's schema, every figure
present and finite, the report and plots written. Never how fast anything is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.artifacts import resolve_models
from benchmarks.registry import NAMES
from benchmarks.stats import FIGURE_FIELDS, is_valid_figure

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SUITES = NAMES  # every registered suite (benchmarks/registry.py)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    models = resolve_models()
    if models.any_onnx is None:
        pytest.skip("no ONNX model in models/manifest.json to benchmark")
    out = tmp_path_factory.mktemp("bench")
    results = out / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quick", "--results-dir", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    files = list(results.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), out


def test_quick_run_records_machine_versions_and_commit(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    run, _ = quick_run
    assert run["schema_version"] == 1 and run["quick"] is True
    cpu = run["machine"]["cpu"]
    assert isinstance(cpu["model"], str) and cpu["model"]
    assert set(cpu["flags"]) >= {"avx2", "avx512f", "avx512_vnni"}
    assert all(isinstance(v, bool) for v in cpu["flags"].values())
    assert isinstance(cpu["usable_cores"], int) and cpu["usable_cores"] >= 1
    versions = run["versions"]
    assert versions["onnxruntime"] and versions["numpy"]
    assert versions.get("opencv-python-headless") or versions.get("opencv-python")
    assert "tensorflow" in versions or "tensorflow-cpu" in versions
    assert run["git"]["sha"]


def test_quick_run_every_figure_is_complete_and_finite(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    run, _ = quick_run
    assert set(run["suites"]) == set(SUITES)
    for name, suite in run["suites"].items():
        assert "all" not in suite["skipped"], f"{name}: {suite['skipped']}"
        assert suite["figures"], f"{name} recorded no figures"
        for key, figure in suite["figures"].items():
            assert set(FIGURE_FIELDS) <= set(figure), f"{name}/{key}: {figure}"
            assert is_valid_figure(figure), f"{name}/{key} is not finite/consistent: {figure}"
        for key, reason in suite["skipped"].items():
            assert isinstance(reason, str) and reason, f"{name}/{key} skipped without a reason"


def _expect(run: dict[str, Any], suite: str, keys: list[str]) -> None:
    figures, skipped = run["suites"][suite]["figures"], run["suites"][suite]["skipped"]
    for key in keys:
        # A figure that is absent must be explained by a skip entry covering it.
        covered = any(
            key == s or key.startswith(s + "/") or f"/{s}/" in f"/{key}/" or s in key
            for s in skipped
        )
        assert key in figures or covered, f"{suite}: {key} missing and not skipped"


def test_quick_run_has_the_key_figures_of_each_suite(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    run, _ = quick_run
    models = resolve_models()
    engines = ["ort_fp32"] * bool(models.fp32) + ["ort_int8"] * bool(models.int8)
    if models.keras:
        engines += ["keras_predict", "keras_call"]
    # quick: the first thread count only (one TensorFlow child)
    _expect(run, "model", [f"t1/b{b}/{e}/latency" for b in (1, 8) for e in engines])
    _expect(
        run,
        "preprocess",
        [
            f"{g}/{p}/latency"
            for g in ("600x450", "12mp")
            for p in ("opencv_reduced", "opencv_full", "upstream_keras")
        ]
        + ["600x450/predict/latency", "600x450/explain/latency"],
    )
    measures = ("latency", "throughput", "server_cpu_per_request", "client_cpu_per_request")
    service = [f"service/c{c}/{m}" for c in (1, 4, 8, 16) for m in measures]
    service += ["ceiling/best/throughput", *(f"ratio/c{c}/service_vs_ceiling" for c in (1, 4, 16))]
    if models.keras:
        service += [f"baseline/c{c}/throughput" for c in (1, 4, 16)]
        service += ["ratio/ceiling_vs_baseline_peak", "ratio/ceiling_with_client_vs_baseline_peak"]
        paired = ("service_vs_baseline", "ceiling_vs_baseline", "service_vs_ceiling")
        paired += ("ceiling_with_client_vs_baseline",)
        service += [f"paired/{k}" for k in paired]
    _expect(run, "service", service)
    startup = [
        f"service/{m}" for m in ("ready_s", "rss_after_warmup", "rss_after_requests", "rss_peak")
    ]
    if models.keras:
        startup += ["baseline/ready_s", "baseline/rss_after_requests"]
    _expect(run, "startup", startup)
    _expect(run, "accuracy", ["fp32/bma", "fp32/accuracy"])
    # A peer whose venv is missing is skipped by name (the quick run builds nothing), which
    # covers its figures and its ratios.
    peers = [f"{s}/{m}" for s in ("service", "service_noauth") for m in ("p50_c1", "rps_c8")]
    for peer in ("floor", "bentoml", "pytriton"):
        peers += [f"{peer}/p50_c1", f"{peer}/rps_c8", f"{peer}/parity_top_class"]
        peers += [f"ratio/service_vs_{peer}/p50_c1", f"ratio/service_vs_{peer}/rps_c8"]
    _expect(run, "peers", peers)
    _expect(run, "edge", ["c1/latency", "c4/throughput", "ready_s", "rss_peak"])
    _expect(
        run,
        "footprint",
        [
            "service/venv_closure_total",
            "baseline/venv_closure_total",
            "service/docker_image_estimate",
        ],
    )


def test_quick_run_service_answered_every_request(quick_run: tuple[dict[str, Any], Path]) -> None:
    run, _ = quick_run
    statuses = run["suites"]["service"]["params"]["status_counts"]["service"]
    for level, counts in statuses.items():
        assert counts and all(code.startswith("2") for code in counts), (level, counts)


def test_quick_run_accounts_the_servers_cpu(quick_run: tuple[dict[str, Any], Path]) -> None:
    # The server decodes every upload, so a server charged less than a fraction of one decode
    # (timed by the preprocess suite in the same run, on this machine) was not the process that
    # answered. A fixed number of milliseconds would hold on one CPU only.
    run, _ = quick_run
    figures = run["suites"]["service"]["figures"]
    decode = run["suites"]["preprocess"]["figures"]["600x450/opencv_reduced/latency"]["median"]
    for c in (1, 4, 8, 16):
        server = figures[f"service/c{c}/server_cpu_per_request"]["median"]
        client = figures[f"service/c{c}/client_cpu_per_request"]["median"]
        assert server > decode / 4, (c, server, decode)
        # The server runs as the benchmark's child: its CPU must not land on the client's side
        # (sending a prepared body and reading a small JSON answer costs far less than decoding).
        assert 0.0 <= client < server / 2, (c, client, server)


def test_quick_run_writes_report_and_plots(quick_run: tuple[dict[str, Any], Path]) -> None:
    _, out = quick_run
    report = (out / "RESULTS.md").read_text()
    for heading in ("## Targets", "## Machine", "## Service under HTTP load", "## Reproduce"):
        assert heading in report
    assert "Quick run" in report
    for name in ("latency.png", "throughput.png", "history.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
