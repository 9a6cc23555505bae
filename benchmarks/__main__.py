"""python -m benchmarks <suite> [--quick] | run | report | accuracy — see benchmarks/RESULTS.md."""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported (issue 16)
# Before anything imports TensorFlow (the Keras engines, the upstream preprocessing path).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import argparse
import logging
import sys
import time
from pathlib import Path

from benchmarks.artifacts import resolve_models
from benchmarks.results import (
    DEFAULT_RESULTS_DIR,
    QUICK_RESULTS_DIR,
    SuiteResult,
    write_run,
)

log = logging.getLogger("benchmarks")


def run_suites(names: list[str], args: argparse.Namespace) -> int:
    """Run the named suites, write the result file, regenerate RESULTS.md and the plots."""
    from benchmarks import machine
    from benchmarks.registry import suite_named
    from benchmarks.report import regenerate
    from benchmarks.targets import evaluate_targets

    results_dir: Path = args.results_dir or (
        QUICK_RESULTS_DIR if args.quick else DEFAULT_RESULTS_DIR
    )
    models = resolve_models(args.manifest, args.keras, args.fp32, args.int8, args.serve_model)
    log.info("models: %s", models)
    load_start = machine.load_average()
    started = time.monotonic()
    suites: list[SuiteResult] = []
    failed: list[str] = []
    for name in names:
        log.info("suite %s%s", name, " (quick)" if args.quick else "")
        t0 = time.monotonic()
        try:
            suite = suite_named(name).run(models, args)
        except Exception as exc:  # one broken suite must not lose the others' figures
            log.exception("suite %s failed", name)
            suite = SuiteResult(name, args.quick)
            suite.skip("all", f"suite failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            failed.append(name)
        suite.duration_s = time.monotonic() - t0
        suites.append(suite)
        log.info("suite %s done in %.1f s", name, suite.duration_s)
    context = {
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "duration_s": round(time.monotonic() - started, 1),
        "load_average_start": load_start,
        "load_average_end": machine.load_average(),
        "models": models.describe(),
    }
    path = write_run(results_dir, suites, args.quick, context)
    report = regenerate(results_dir, path) if args.report else None
    print(f"results: {path}")
    if report:
        print(f"report:  {report}")
    import json

    for verdict in evaluate_targets(json.loads(path.read_text())):
        print(
            f"  {verdict.label.strip('*'):<13} {verdict.target}: {verdict.measured} "
            f"(target {verdict.threshold})"
        )
    if failed:
        print(f"failed suites: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="tiny sample sizes (all suites < 3 minutes); results go to "
        "benchmarks/.work/results unless --results-dir is given",
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        help="folder for the JSON result files; RESULTS.md and plots/ are written "
        "beside it, in its parent (default benchmarks/results)",
    )
    p.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="regenerate RESULTS.md and the plots",
    )
    p.add_argument("--manifest", type=Path, help="models manifest (default models/manifest.json)")
    p.add_argument("--keras", type=Path, help="Keras .h5 source model (overrides the manifest)")
    p.add_argument("--fp32", type=Path, help="FP32 ONNX model (overrides the manifest)")
    p.add_argument("--int8", type=Path, help="INT8 ONNX model (overrides the manifest)")
    p.add_argument(
        "--serve-model",
        type=Path,
        help="model the server loads (default APP_MODEL_PATH, else the preferred)",
    )
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="model suite")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="model suite")
    p.add_argument("--runs", type=int, help="timed runs per cell (model, preprocess suites)")
    p.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 4, 8, 16], help="service suite"
    )
    p.add_argument("--requests", type=int, help="requests per level (service, startup suites)")
    p.add_argument("--starts", type=int, help="cold starts to take the median of (startup)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (peers; default 6, quick 1)")
    p.add_argument(
        "--build",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="peers: build a missing peer venv from its pins (default: full runs only)",
    )
    p.add_argument(
        "--memory-mb",
        type=int,
        default=512,
        help="edge: the peak-RSS budget, MB",
    )
    p.add_argument(
        "--address-space-mib",
        type=int,
        default=768,
        help="edge: the address-space ceiling the server starts under (prlimit --as), MiB",
    )
    p.add_argument(
        "--install",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="footprint: also do the real offline install (default: full runs only)",
    )


def parser() -> argparse.ArgumentParser:
    from benchmarks import accuracy
    from benchmarks.registry import NAMES, SUITES

    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of the skin-lesion service against the upstream Keras approach.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="every suite, then RESULTS.md and plots")
    _common(run)
    run.add_argument(
        "--skip", choices=NAMES, action="append", default=[], help="leave a suite out (repeatable)"
    )
    for suite in SUITES:
        if suite.command:
            _common(sub.add_parser(suite.name, help=suite.help))
    # The accuracy subcommand evaluates one model; `run` evaluates Keras, FP32 and INT8.
    accuracy.add_parser(sub)
    rep = sub.add_parser("report", help="regenerate RESULTS.md and plots from result files")
    rep.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    rep.add_argument("--file", type=Path, help="result file to render (default the newest)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "aiohttp", "matplotlib", "absl", "tensorflow", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "accuracy":
        return int(args.func(args))
    if args.command == "report":
        from benchmarks.report import regenerate

        print(f"report: {regenerate(args.results_dir, args.file)}")
        return 0
    from benchmarks.registry import NAMES

    names = [s for s in NAMES if s not in args.skip] if args.command == "run" else [args.command]
    return run_suites(names, args)


if __name__ == "__main__":
    raise SystemExit(main())
