"""Fast checks of the benchmark harness: figures, manifest reading, the load guard."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from benchmarks.artifacts import read_manifest
from benchmarks.footprint import closure
from benchmarks.load import run_load
from benchmarks.results import SuiteResult, load_runs, write_run
from benchmarks.stats import Figure, is_valid_figure
from benchmarks.targets import evaluate_targets


def test_figure_of_summarises_samples() -> None:
    fig = Figure.of(list(range(1, 101)), "ms")
    assert fig.n == 100 and fig.min == 1 and fig.max == 100
    assert fig.median == pytest.approx(50.5)
    assert fig.p95 == pytest.approx(95.05) and fig.p99 == pytest.approx(99.01)
    assert is_valid_figure(fig.as_dict())


def test_figure_validity_rejects_nan_and_missing_fields() -> None:
    good = Figure.value(2.0, "x").as_dict()
    assert is_valid_figure(good)
    assert not is_valid_figure({**good, "p99": math.nan})
    assert not is_valid_figure({k: v for k, v in good.items() if k != "unit"})
    assert not is_valid_figure({**good, "n": 0})
    with pytest.raises(ValueError):
        Figure.of([], "ms")


def test_read_manifest_finds_fp32_int8_and_source(tmp_path: Path, fixtures_dir: Path) -> None:
    for name in ("m.onnx", "m_int8.onnx", "model.onnx"):
        (tmp_path / name).write_bytes(b"onnx")
    shutil.copy(fixtures_dir / "upstream_skin.h5", tmp_path / "skin.h5")
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "preferred": "m_int8.onnx",
                "source": {"file": "skin.h5", "sha256": "ignored-when-the-name-matches-no"},
                "files": {
                    "fp32": {"path": "m.onnx", "precision": "fp32"},
                    "int8": {"path": "m_int8.onnx", "precision": "int8"},
                },
                "triton": {"path": "model.onnx"},
            }
        )
    )
    models = read_manifest(tmp_path / "manifest.json")
    assert models.fp32 == (tmp_path / "m.onnx").resolve()
    assert models.int8 == (tmp_path / "m_int8.onnx").resolve()
    assert models.serving == models.int8
    # A source whose sha256 does not match the manifest is not taken for the model.
    assert models.keras is None or models.keras.parent != tmp_path


def test_read_manifest_checks_the_source_sha256(tmp_path: Path, fixtures_dir: Path) -> None:
    from app.inference.classifier import file_sha256

    for name in ("m.onnx", "m_int8.onnx"):
        (tmp_path / name).write_bytes(b"onnx")
    shutil.copy(fixtures_dir / "upstream_skin.h5", tmp_path / "skin.h5")
    sha = file_sha256(tmp_path / "skin.h5")
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "preferred": "m.onnx",
                "preferred_reason": "INT8 is not faster than FP32 here",
                "source": {"file": "skin.h5", "sha256": sha},
                "files": {"fp32": {"path": "m.onnx"}, "int8": {"path": "m_int8.onnx"}},
            }
        )
    )
    models = read_manifest(tmp_path / "manifest.json")
    assert models.keras == (tmp_path / "skin.h5").resolve()
    assert models.fp32 == models.serving == (tmp_path / "m.onnx").resolve()
    assert models.int8 == (tmp_path / "m_int8.onnx").resolve()


def test_load_generator_refuses_non_loopback_targets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://10.0.0.1:8000/api/v1/predict", [b""], 1, 1, 1.0)


def test_closure_reports_missing_requirements() -> None:
    found, missing = closure(["numpy", "surely-not-installed-pkg-xyz"])
    assert "numpy" in found
    assert missing == ["surely-not-installed-pkg-xyz"]


def test_results_merge_suites_into_one_file(tmp_path: Path) -> None:
    a, b = SuiteResult("model", True), SuiteResult("service", True)
    a.add_samples("t1/b1/ort_fp32/latency", [1.0, 2.0, 3.0], "ms")
    b.add("service/c1/throughput", Figure.value(10.0, "req/s", 5))
    first = write_run(tmp_path, [a], True, {})
    second = write_run(tmp_path, [b], True, {})
    assert first == second
    (run,) = load_runs(tmp_path)
    assert set(run["suites"]) == {"model", "service"}
    assert len(run["suites"]["model"]["distributions"]["t1/b1/ort_fp32/latency"]) == 101


def test_targets_unmeasured_are_never_met() -> None:
    verdicts = evaluate_targets({"suites": {}})
    assert verdicts and all(v.met is None for v in verdicts)
    run = {
        "suites": {
            "service": {"figures": {"service/c1/latency": Figure.value(12.0, "ms").as_dict()}}
        }
    }
    p50 = evaluate_targets(run)[0]
    assert p50.met is False and p50.measured == "12.0 ms"


def test_throughput_target_reads_the_paired_rounds_when_there_are_some() -> None:
    from benchmarks.service import _paired_table

    peaks = {
        "service/c8/throughput": Figure.value(400.0, "req/s").as_dict(),
        "baseline/c4/throughput": Figure.value(10.0, "req/s").as_dict(),  # 40x, minutes apart
    }
    run: dict = {"suites": {"service": {"figures": dict(peaks), "params": {}}}}
    times = next(v for v in evaluate_targets(run) if "baseline" in v.target)
    assert times.met is True and times.measured.startswith("40.0×")

    service, baseline, ceiling = [400.0, 380.0, 390.0], [25.0, 20.0, 21.0], [480.0, 450.0, 470.0]
    paired = {"rounds": 3, "service_concurrency": 8, "baseline_concurrency": 4}
    paired |= {"service_rps": service, "baseline_rps": baseline, "ceiling_ips": ceiling}
    figures = run["suites"]["service"]["figures"]
    for key, values in (
        ("service_vs_baseline", [s / b for s, b in zip(service, baseline, strict=True)]),
        ("ceiling_vs_baseline", [c / b for c, b in zip(ceiling, baseline, strict=True)]),
    ):
        figures[f"paired/{key}"] = Figure.of(values, "x").as_dict()
    run["suites"]["service"]["params"]["paired"] = paired
    times = next(v for v in evaluate_targets(run) if "baseline" in v.target)
    # Per-round ratios 16.0, 19.0 and 18.6: their median, not the 40x of the unpaired peaks.
    assert times.met is False and times.measured.startswith("18.6×")
    assert "3 paired rounds (16.0–19.0×)" in times.measured
    assert "in-process bound 22.4× (19.2–22.5×)" in times.measured
    table = _paired_table(paired)
    assert "| 2 | 380 | 20.0 | 450 | 19.0 | 22.5 | — | 0.84 |" in table
    paired["ceiling_with_client_vs_baseline"] = [17.0, 20.5, 19.9]
    assert "| 2 | 380 | 20.0 | 450 | 19.0 | 22.5 | 20.5 | 0.84 |" in _paired_table(paired)


def test_paired_bound_pays_the_load_generators_cpu_out_of_the_same_cores() -> None:
    from benchmarks.service import PairedRounds

    rates = [{"serial": 300.0, "parallel": 500.0}, {"serial": 600.0, "parallel": 400.0}]
    rounds = PairedRounds(2, "parallel", baseline_rps=[20.0, 20.0], client_ms=[0.5, 0.5])
    rounds.ceiling_rates = rates
    # One layout for every round (the best overall), not each round's luckiest one.
    assert rounds.ceiling_ips == [500.0, 400.0]
    # 2 cores / (4 ms per image + 0.5 ms of client per request) = 444.4/s, over 20 req/s.
    assert rounds.bound_with_client() == pytest.approx([22.22, 18.18], abs=0.01)


def test_cpu_accounting_counts_children_that_are_still_running() -> None:
    """A multi-worker server serves from child processes that outlive the measurement."""
    import subprocess
    import sys

    import psutil

    from benchmarks.load import _cpu_seconds

    me = psutil.Process()
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
    before = _cpu_seconds(me)  # before the child exists, so all of its loop falls after
    with subprocess.Popen(
        [sys.executable, "-c", busy + "print('done', flush=True)\n" + "time.sleep(30)"],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "done"
            assert _cpu_seconds(me) - before >= 0.3  # the child's loop, while it still runs
        finally:
            child.kill()


def test_quantization_scheme_reads_the_int8_files_integer_types() -> None:
    # The shipped "int8" file is the build's A16W8 fallback (models/manifest.json says so):
    # the report must not present its timings as INT8 kernel speed.
    from benchmarks.artifacts import REPO, quantization_scheme

    manifest = json.loads((REPO / "models" / "manifest.json").read_text())
    scheme = quantization_scheme(REPO / "models" / "skin_lesion_int8.onnx")
    assert scheme["activations"] == [manifest["quantization"]["activation_type"]]
    assert scheme["weights"] == [manifest["quantization"]["weight_type"]]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread figures need /proc")
def test_thread_use_splits_the_main_thread_s_cpu_from_the_other_threads_waits() -> None:
    import os
    import threading
    import time
    from collections import Counter

    from benchmarks.load import LoadResult, ThreadUse

    slept, stop = threading.Event(), threading.Event()

    def blocks() -> None:
        for _ in range(40):
            threading.Event().wait(0.002)  # sleeps: one voluntary context switch each
        slept.set()
        stop.wait()  # alive until read: an ended thread takes its counts with it

    worker = threading.Thread(target=blocks)
    before = ThreadUse.read(os.getpid())
    worker.start()
    end = time.thread_time() + 0.2
    while time.thread_time() < end:  # the main thread's own CPU
        pass
    slept.wait()
    after = ThreadUse.read(os.getpid())
    stop.set()
    worker.join()
    assert before is not None and after is not None
    used = after - before
    assert used.main_cpu_s >= 0.1
    assert used.other_waits >= 40
    result = LoadResult(8, statuses=Counter({"200": 4}), server_threads=used)
    assert result.per_request("main_cpu_s") == pytest.approx(used.main_cpu_s * 1e3 / 4)
    assert result.per_request("other_waits") == used.other_waits / 4
    assert LoadResult(8, statuses=Counter({"200": 4})).per_request("other_waits") is None
