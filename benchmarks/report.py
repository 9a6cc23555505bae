"""RESULTS.md and the PNG plots, regenerated from result files after every run."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from app.files import atomic_write
from benchmarks.markdown import borrowed, table
from benchmarks.registry import SUITES
from benchmarks.results import QUANTILES, CellKey, LevelKey, load_runs
from benchmarks.targets import evaluate_targets

log = logging.getLogger(__name__)

HISTORY_KEYS: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("service", "service/c1/latency", "median", "HTTP p50 at c=1 (ms)", 8.0),
    ("service", "ratio/c8/service_vs_ceiling", "median", "c=8 throughput / ceiling", 0.8),
    ("startup", "service/ready_s", "median", "cold start to ready (s)", 1.5),
    ("startup", "service/rss_after_requests", "median", "RSS after load (MB)", 200.0),
    ("model", "t1/b1/int8_speedup_vs_fp32", "median", "INT8/FP32 speed-up, b1 t1 (×)", 1.5),
    ("model", "t1/b1/ort_fp32/latency", "median", "ORT FP32 b1 t1 (ms)", None),
)


def _ab_section(ab_runs: list[dict[str, Any]]) -> list[str]:
    """The floor-gap candidates, each an A/B of two checkouts (``python -m benchmarks.ab``)."""
    if not ab_runs:
        return ["_No candidate measured yet (`python -m benchmarks.ab A B --label ...`)._", ""]
    rows = []
    for ab in ab_runs:
        ratios = []
        for key in ("p50_c1_ms", "rps_c8", "server_cpu_ms_c8", "loop_cpu_ms_c8"):
            if not ab.get(key):  # runs before the CPU time (or the loop's) was recorded
                ratios.append("—")
                continue
            a, b = ab[key]["A"], ab[key]["B"]
            per_round = sorted(y / x for x, y in zip(a, b, strict=True))
            mid = (
                per_round[len(per_round) // 2]
                if len(per_round) % 2
                else ((per_round[len(per_round) // 2 - 1] + per_round[len(per_round) // 2]) / 2)
            )
            ratios.append(f"{mid:.2f} ({per_round[0]:.2f}–{per_round[-1]:.2f})")
        rows.append(
            [
                ab["label"],
                str(ab["created_utc"])[:10],
                str(len(ab["rps_c8"]["A"])),
                *ratios,
                ab.get("decision", "—"),
            ]
        )
    return [
        "Each candidate is B against A, the same service from two checkouts, started cold in "
        "every round, A-B then B-A, API auth off (the token check's database write would drown "
        "a small change); the median of the per-round ratios B/A (range over rounds). CPU/req: "
        "the server process's CPU time per request at c=8, which other work on the machine "
        "moves less than the wall-clock figures; loop CPU/req: of it, the event loop's "
        "(the main thread's), for changes to the HTTP side.",
        "",
        *table(
            [
                "candidate",
                "date",
                "rounds",
                "p50 c=1 B/A",
                "req/s c=8 B/A",
                "CPU/req c=8 B/A",
                "loop CPU/req c=8 B/A",
                "decision",
            ],
            rows,
        ),
    ]


def _machine_section(run: dict[str, Any]) -> list[str]:
    host = run.get("machine", {})
    cpu = host.get("cpu", {})
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu.get("flags", {}).items())
    versions = ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items() if v)
    return [
        f"- CPU: {cpu.get('model')} ({cpu.get('arch')}); {flags}",
        f"- Usable cores: {cpu.get('usable_cores')} (host reports {cpu.get('host_cores')}); "
        f"memory {host.get('memory_gib')} GiB; {host.get('os')}",
        f"- Load average (1/5/15 min) at start {run.get('load_average_start')}, at end "
        f"{run.get('load_average_end')}: the machine is shared, so absolute times move between "
        "runs; the ratios within one run are what count.",
        f"- Versions: {versions}",
        "",
    ]


MODEL_BUDGET_MS = 6.0  # issue 17: the served model, per image, batch 1, one thread


def _vector_isa(flags: dict[str, bool]) -> str:
    if flags.get("avx512f"):
        return "AVX-512" + (" + VNNI" if flags.get("avx512_vnni") else "")
    return "AVX2 only" if flags.get("avx2") else "no AVX2"


def cost_by_cpu(run: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """The served FP32 model's single-thread cost in every full run that timed the same file
    (same sha256), one row per run: the CPU's vector instructions decide it, not the run."""
    sha = (run.get("models", {}).get("fp32") or {}).get("sha256")
    if not sha:
        return []
    rows = []
    for other in runs:
        figures = other.get("suites", {}).get("model", {}).get("figures", {})
        b1 = figures.get("t1/b1/ort_fp32/per_image")
        same = (other.get("models", {}).get("fp32") or {}).get("sha256") == sha
        if not same or other.get("quick") or not b1:
            continue
        b8 = figures.get("t1/b8/ort_fp32/per_image")
        cpu = other.get("machine", {}).get("cpu", {})
        rows.append(
            [
                f"`{other.get('_file', '?')}`",
                str(cpu.get("model")),
                _vector_isa(cpu.get("flags", {})),
                f"{b1['median']:.2f}",
                f"{b8['median']:.2f}" if b8 else "—",
                "within" if b1["median"] <= MODEL_BUDGET_MS else "**over**",
            ]
        )
    if not rows:
        return []
    return [
        f"### The served model's cost by CPU (issue 17's budget: {MODEL_BUDGET_MS:g} ms an "
        "image, batch 1, one thread)",
        "",
        "Every full run that timed this FP32 file (same sha256), from the model suite; ms per "
        "image, one thread.",
        "",
        *table(["run", "CPU", "vectors", "batch 1", "batch 8", "budget"], rows),
    ]


def int8_sweep_lines(sweep: dict[str, Any] | None) -> list[str]:
    """The INT8 recipes tried for the shipped model (``python -m conversion int8-sweep``)."""
    if not sweep:
        return []
    rows = [
        [
            r["recipe"],
            f"{r['top1_agreement']:.3f}",
            "passed" if r["gates_passed"] else "failed",
            f"{r['speedup']['batch1']:.2f}x",
            f"{r['speedup']['batch8']:.2f}x",
        ]
        for r in sweep["recipes"]
    ]
    cpu = sweep["cpu"]
    return [
        f"INT8 recipes for `{sweep['model']}` (`python -m conversion int8-sweep`, gates on the "
        f"{sweep['split']} split, speed on one thread, {cpu['model']}, "
        f"{'with' if cpu['avx512_vnni'] else 'without'} AVX512-VNNI"
        f"{' and AMX-INT8' if cpu.get('amx_int8') else ''}):",
        "",
        *table(["recipe", "top-1 agreement", "gates", "batch 1", "batch 8"], rows),
        f"Verdict: {sweep['verdict']}.",
        "",
    ]


def render(
    run: dict[str, Any],
    plots: list[str],
    ab_runs: list[dict[str, Any]] | None = None,
    overload_runs: list[dict[str, Any]] | None = None,
    int8_sweeps: list[dict[str, Any]] | None = None,
    runs: list[dict[str, Any]] | None = None,
) -> str:
    """The whole RESULTS.md for one result file."""
    from benchmarks.overload import section as overload_section

    verdicts = evaluate_targets(run)
    missed = [v for v in verdicts if v.met is False]
    unmeasured = [v for v in verdicts if v.met is None]
    models = run.get("models", {})
    quick = run.get("quick")
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks` from "
        f"`{run.get('_file', '?')}` (commit {run.get('git', {}).get('sha')}"
        f"{', uncommitted changes' if run.get('git', {}).get('dirty') else ''}, "
        f"{run.get('created_utc')}). Do not edit by hand.",
        "",
    ]
    if quick:
        lines += [
            "> **Quick run**: tiny sample sizes, for checking the harness only. "
            "These numbers are not results.",
            "",
        ]
    lines += ["## Targets", ""]
    rows = [[v.target, v.source, v.threshold, v.measured, v.label] for v in verdicts]
    lines += table(["target", "from", "threshold", "measured", "verdict"], rows)
    earlier = sorted({s["_from"] for s in run.get("suites", {}).values() if s.get("_from")})
    if earlier:
        lines += [
            "Suites this run did not include are read from the newest earlier result file "
            f"that has them ({', '.join(f'`{b}`' for b in earlier)}); each such section "
            "names its file and CPU, and the machines differ.",
            "",
        ]
    if missed:
        lines += [
            "**Missed:** "
            + "; ".join(f"{v.target} ({v.measured}, target {v.threshold})" for v in missed)
            + ".",
            "",
        ]
    else:
        lines += ["No measured target was missed.", ""]
    if unmeasured:
        lines += ["Not measured in this run: " + "; ".join(v.target for v in unmeasured) + ".", ""]
    lines += ["## Machine", "", *_machine_section(run)]
    lines += ["## Models", ""]
    for name in ("serving", "keras", "fp32", "int8"):
        entry = models.get(name)
        lines.append(
            f"- {name}: "
            + (
                f"`{entry['path']}` ({entry['bytes'] / 1e6:.2f} MB, sha256 {entry['sha256'][:12]}…)"
                if entry
                else "none"
            )
        )
    scheme = (models.get("int8") or {}).get("quantization")
    if scheme:
        acts, weights = "/".join(scheme["activations"]), "/".join(scheme["weights"])
        lines.append(f"- int8 file's integer types: activations {acts}, weights {weights}")
        if any(a.endswith("16") for a in scheme["activations"]):
            lines.append(
                "  - 16-bit activations (the build's A16W8 fallback): onnxruntime's CPU provider "
                "has no 16-bit integer kernels and runs this file as float convolutions between "
                "Q/DQ pairs, so its timings below are not INT8 kernel speed."
            )
    lines += [f"- manifest: `{models.get('manifest')}`", ""]
    lines += cost_by_cpu(run, runs or [run])
    for sweep in int8_sweeps or []:  # the card's, then other CPUs' (benchmarks/results/int8)
        lines += int8_sweep_lines(sweep)
    for suite in SUITES:
        lines += [f"## {suite.title}", "", *borrowed(run, suite.name), *suite.section(run)]
    lines += ["## Floor gap: candidates", "", *_ab_section(ab_runs or [])]
    lines += ["## Overload (issue 16)", "", *overload_section(overload_runs or [])]
    notes = [
        (name, s) for name, s in run.get("suites", {}).items() if s.get("notes") or s.get("skipped")
    ]
    if notes:
        lines += ["## Notes and skipped figures", ""]
        for name, s in notes:
            for note in s.get("notes", []):
                lines.append(f"- {name}: {note}")
            for key, reason in s.get("skipped", {}).items():
                lines.append(f"- {name}: skipped `{key}`: {reason}")
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        "python -m benchmarks run                 # every suite (20 to 35 minutes, by machine)",
        "python -m benchmarks run --quick         # a few minutes, into benchmarks/.work/",
        f"python -m benchmarks {'|'.join(s.name for s in SUITES if s.command)} [--quick]",
        "python -m benchmarks accuracy MODEL --images DIR --labels CSV [--json OUT]",
        "python -m benchmarks report              # rebuild this file and the plots",
        "python -m benchmarks.ab A_DIR B_DIR --label TEXT   # a floor-gap candidate, A/B",
        "```",
        "",
        f"This run: `{run.get('command', 'python -m benchmarks run')}`"
        + (f", {run['duration_s'] / 60:.1f} min." if run.get("duration_s") else "."),
        "",
    ]
    return "\n".join(lines)


def plot(run: dict[str, Any], runs: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Latency CDFs, throughput against concurrency, and the history; returns PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def cdf(ax: Any, dists: dict[str, list[float]], keys: list[str], title: str) -> None:
        for key in keys:
            if key in dists:
                ax.plot(dists[key], QUANTILES, label=key.removesuffix("/latency"))
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("percentile")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)

    suites = run.get("suites", {})
    model_d = suites.get("model", {}).get("distributions", {})
    service_d = suites.get("service", {}).get("distributions", {})
    pre_d = suites.get("preprocess", {}).get("distributions", {})
    if model_d or service_d or pre_d:
        fig, axes = plt.subplots(2, 2, figsize=(12, 9))
        cdf(
            axes[0][0],
            model_d,
            sorted(
                k for k in model_d if (c := CellKey.parse(k)) and (c.threads, c.batch) == (1, 1)
            ),
            "model, 1 thread, batch 1",
        )
        cdf(
            axes[0][1],
            model_d,
            sorted(
                k for k in model_d if (c := CellKey.parse(k)) and (c.threads, c.batch) == (1, 8)
            ),
            "model, 1 thread, batch 8",
        )
        cdf(axes[1][0], service_d, sorted(service_d), "HTTP latency by server and concurrency")
        cdf(axes[1][1], pre_d, sorted(pre_d), "preprocessing, bytes → tensor")
        fig.tight_layout()
        path = out_dir / "latency.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    figs = suites.get("service", {}).get("figures", {})
    if figs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        rates = [
            (level, v["median"])
            for k, v in figs.items()
            if (level := LevelKey.parse(k)) and level.quantity == "throughput"
        ]
        for target in ("service", "baseline"):
            pts = sorted((lv.concurrency, rps) for lv, rps in rates if lv.server == target)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=target)
        best = figs.get("ceiling/best/throughput", {}).get("median")
        if best:
            ax.axhline(best, linestyle="--", color="grey", label="in-process ceiling")
            ax.axhline(best * 0.8, linestyle=":", color="grey", label="80 % of ceiling")
        levels = sorted({lv.concurrency for lv, _ in rates})
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.set_ylabel("successful requests / s (log)")
        ax.set_title("Throughput against concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / "throughput.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    history = [r for r in runs if not r.get("quick")] or runs
    if history:
        fig, grid = plt.subplots(3, 2, figsize=(11, 8), sharex=True)
        labels = [re.sub(r"\.json$", "", r.get("_file", "?")) for r in history]
        for ax, (suite, key, stat, title, goal) in zip(grid.flat, HISTORY_KEYS, strict=True):
            ys = [
                r.get("suites", {}).get(suite, {}).get("figures", {}).get(key, {}).get(stat)
                for r in history
            ]
            xs = [i for i, y in enumerate(ys) if isinstance(y, int | float)]
            ax.plot(xs, [ys[i] for i in xs], marker="o")
            if goal is not None:
                ax.axhline(goal, linestyle=":", color="red", label="target")
                ax.legend(fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.grid(True, alpha=0.3)
        for ax in grid[-1]:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        fig.suptitle("Key figures across result files")
        fig.tight_layout()
        path = out_dir / "history.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return [str(p) for p in written]


def with_latest_suites(run: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``run``, with each suite it lacks taken from the newest earlier run of the same kind
    (quick or full) that has it, marked with that file: one suite run on its own (``python -m
    benchmarks peers``) then adds its section without hiding the others."""
    merged = dict(run)
    suites = dict(run.get("suites", {}))
    for other in reversed(runs):
        if other is run or bool(other.get("quick")) != bool(run.get("quick")):
            continue
        if str(other.get("created_utc", "")) > str(run.get("created_utc", "")):
            continue
        for name, suite in other.get("suites", {}).items():
            if name not in suites:
                cpu = other.get("machine", {}).get("cpu", {}).get("model")
                suites[name] = {**suite, "_from": other.get("_file"), "_cpu": cpu}
    merged["suites"] = suites
    return merged


def regenerate(results_dir: Path, result_file: Path | None = None) -> Path:
    """Write RESULTS.md and plots/ beside ``results_dir`` from ``result_file`` (or the newest)."""
    runs = load_runs(results_dir)
    if not runs:
        raise FileNotFoundError(f"no result files in {results_dir}")
    run = next((r for r in runs if result_file and r["_file"] == result_file.name), runs[-1])
    run = with_latest_suites(run, runs)
    root = results_dir.parent
    pngs = plot(run, runs, root / "plots")
    rel = [str(Path(p).relative_to(root)) for p in pngs]
    target = root / "RESULTS.md"
    from benchmarks.overload import load_runs as load_overload_runs

    ab_runs = [json.loads(p.read_text()) for p in sorted((results_dir / "ab").glob("*.json"))]
    overload_runs = load_overload_runs(results_dir / "overload")
    card_sweep = root.parent / "models" / "card" / "int8_sweep.json"
    sweep_files = [card_sweep] if card_sweep.is_file() else []
    sweep_files += sorted((results_dir / "int8").glob("*.json"))
    sweeps = [json.loads(p.read_text()) for p in sweep_files]
    atomic_write(target, render(run, rel, ab_runs, overload_runs, sweeps, runs))
    return target
