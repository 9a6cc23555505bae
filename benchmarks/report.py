"""RESULTS.md and the PNG plots, regenerated from result files after every run."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from benchmarks.results import QUANTILES, load_runs
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


def _figs(run: dict[str, Any], suite: str) -> dict[str, dict[str, Any]]:
    return dict(run.get("suites", {}).get(suite, {}).get("figures", {}))


def _median(figs: dict[str, dict[str, Any]], key: str) -> Any:
    return figs.get(key, {}).get("median")


def _f(value: Any, digits: int = 2) -> str:
    if not isinstance(value, int | float):
        return "—"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, ""]


def _model_section(run: dict[str, Any]) -> list[str]:
    figs = _figs(run, "model")
    if not figs:
        return ["_Model suite not run._", ""]
    params = run["suites"]["model"].get("params", {})
    rows = []
    combos = sorted(
        {tuple(k.split("/")[:3]) for k in figs if k.endswith("/latency")},
        key=lambda c: (int(c[0][1:]), int(c[1][1:]), c[2]),
    )
    for t, b, engine in combos:
        lat = figs[f"{t}/{b}/{engine}/latency"]
        speed = figs.get(f"{t}/{b}/{engine}/speedup_vs_keras_predict", {}).get("median")
        rows.append(
            [
                t[1:],
                b[1:],
                f"`{engine}`",
                _f(lat["median"]),
                _f(lat["p95"]),
                _f(lat["p99"]),
                _f(lat["median"] / int(b[1:])),
                str(lat["n"]),
                "1.00" if engine == "keras_predict" else _f(speed),
            ]
        )
    out = [
        f"Each cell: {params.get('timed_runs')} timed runs after {params.get('warmup_runs')} "
        "warm-up runs, all engines interleaved in a shuffled order. Latency per call in ms.",
        "",
        *_table(
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
        [k.split("/")[0][1:], k.split("/")[1][1:], _f(v["median"])]
        for k, v in sorted(figs.items())
        if k.endswith("int8_speedup_vs_fp32")
    ]
    if int8:
        out += [
            "INT8 speed-up over FP32 (FP32 p50 / INT8 p50):",
            "",
            *_table(["threads", "batch", "INT8 / FP32"], int8),
        ]
    parity = [
        [k.removeprefix("parity/"), _f(v["median"], 6)]
        for k, v in sorted(figs.items())
        if k.startswith("parity/")
    ]
    if parity:
        out += [
            "Agreement on the benchmark images (the conversion gates check this fully):",
            "",
            *_table(["pair / measure", "value"], parity),
        ]
    return out


def _preprocess_section(run: dict[str, Any]) -> list[str]:
    figs = _figs(run, "preprocess")
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
                    _f(lat["median"]),
                    _f(lat["p95"]),
                    _f(lat["p99"]),
                    str(lat["n"]),
                    "0 (reference)" if path == "opencv_full" else _f(diff),
                ]
            )
    explain_rows = [
        [f"`{path}`", _f(lat["median"]), _f(lat["p95"]), str(lat["n"])]
        for path in ("predict", "explain")
        if (lat := figs.get(f"600x450/{path}/latency"))
    ]
    cost = figs.get("600x450/explain_cost_vs_predict", {}).get("median")
    explain_part = (
        [
            "Grad-CAM explanation against a prediction of the same 600x450 upload (decode, "
            "preprocess, one model run each; the explanation also runs the backward pass of "
            f"its class and draws the overlay), interleaved: **{_f(cost)}×** the cost.",
            "",
            *_table(["request", "p50 ms", "p95 ms", "n"], explain_rows),
        ]
        if explain_rows
        else []
    )
    ratios = [
        [k.replace("/", " "), _f(v["median"])] for k, v in sorted(figs.items()) if "speedup" in k
    ]
    return [
        f"Bytes → model tensor at {params.get('model_input')}; uploads: {params.get('uploads')}; "
        f"large: {params.get('large')}. OpenCV on 1 thread, as in the server.",
        "",
        *_table(
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
        *_table(["ratio", "×"], ratios),
        *explain_part,
        *_gate_part(figs, params),
    ]


def _gate_part(figs: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The intended-use gate's cost: a gated prediction against a plain one, paired per round."""
    cost = figs.get("600x450/gate_cost_ms", {}).get("median")
    if cost is None:
        return []
    rows = [
        [f"`{path}`", _f(lat["median"]), _f(lat["p95"]), str(lat["n"])]
        for path in ("predict_plain", "predict_gated")
        if (lat := figs.get(f"600x450/{path}/latency"))
    ]
    ratio = figs.get("600x450/gate_cost_vs_predict", {}).get("median")
    return [
        f"Intended-use gate ({params.get('gate')}) on the same uploads, interleaved: "
        f"**{_f(cost)} ms** per image (median of per-round differences), **{_f(ratio)}×** "
        "a plain prediction (target: <= 0.3 ms).",
        "",
        *_table(["request", "p50 ms", "p95 ms", "n"], rows),
    ]


def _service_section(run: dict[str, Any]) -> list[str]:
    figs = _figs(run, "service")
    if not figs:
        return ["_Service suite not run._", ""]
    suite = run["suites"]["service"]
    params = suite.get("params", {})
    statuses = params.get("status_counts", {})
    rows = []
    for target in ("service", "baseline"):
        levels = sorted({int(k.split("/")[1][1:]) for k in figs if k.startswith(f"{target}/c")})
        for c in levels:
            lat = figs.get(f"{target}/c{c}/latency", {})
            rps = figs.get(f"{target}/c{c}/throughput", {})
            counts = statuses.get(target, {}).get(f"c{c}", {})
            errors = {s: n for s, n in counts.items() if not s.startswith("2")}
            rows.append(
                [
                    target,
                    str(c),
                    _f(lat.get("median")),
                    _f(lat.get("p95")),
                    _f(lat.get("p99")),
                    _f(rps.get("median"), 1),
                    _f(figs.get(f"{target}/c{c}/server_cpu_per_request", {}).get("median")),
                    _f(figs.get(f"{target}/c{c}/client_cpu_per_request", {}).get("median")),
                    str(lat.get("n", 0)),
                    ", ".join(f"{s}: {n}" for s, n in errors.items()) or "0",
                ]
            )
    ceiling = [
        [k.split("/")[1], _f(v["median"], 1)]
        for k, v in sorted(figs.items())
        if k.startswith("ceiling/")
    ]
    ratios = []
    levels = sorted({int(m[1]) for k in figs if (m := re.match(r"ratio/c(\d+)/", k))})
    for c in levels:
        ratios.append(
            [
                str(c),
                _f(figs.get(f"ratio/c{c}/service_vs_ceiling", {}).get("median")),
                _f(figs.get(f"ratio/c{c}/service_vs_baseline_throughput", {}).get("median")),
                _f(figs.get(f"ratio/c{c}/baseline_vs_service_p50_latency", {}).get("median")),
            ]
        )
    return [
        f"Service: {params.get('service')}. Baseline: {params.get('baseline', 'not run')}. "
        f"Load: {params.get('client')}; {params.get('requests_per_level')} requests per level "
        f"for the service, {params.get('baseline_requests_per_level')} for the baseline, "
        f"{params.get('time_cap_s_per_level')} s cap per level; images: {params.get('images')}. "
        "The client runs on the same 2 cores as the server, so it takes CPU from it.",
        "",
        *_table(
            [
                "server",
                "concurrency",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "req/s",
                "server CPU ms/req",
                "client CPU ms/req",
                "n",
                "errors by status",
            ],
            rows,
        ),
        "CPU ms/req: user + system CPU time of the server (all its threads and worker "
        "processes) and of the load generator over the recorded requests, per request. Two "
        "cores give at most 2000 ms of CPU per second, so 2000 / (server + client) bounds the "
        "req/s of a level.",
        "",
        "In-process ceiling (decode + preprocess + infer, no HTTP), images/s:",
        "",
        *_table(["layout", "img/s"], ceiling),
        *_ceiling_bound(figs),
        *_paired_table(params.get("paired")),
        *_table(
            [
                "concurrency",
                "service / ceiling",
                "service / baseline (req/s)",
                "baseline / service (p50)",
            ],
            ratios,
        ),
    ]


def _paired_table(paired: dict[str, Any] | None) -> list[str]:
    """Round by round: the three measured within seconds of each other, and their ratios."""
    if not paired:
        return []
    bounds = paired.get("ceiling_with_client_vs_baseline", [None] * paired["rounds"])
    rounds = zip(
        paired["service_rps"], paired["baseline_rps"], paired["ceiling_ips"], bounds, strict=True
    )
    rows = [
        [str(i + 1), *(_f(v, 1) for v in (s, b, c, s / b, c / b, bound)), _f(s / c)]
        for i, (s, b, c, bound) in enumerate(rounds)
    ]
    return [
        f"Paired rounds: the service at concurrency {paired['service_concurrency']}, the "
        f"baseline at concurrency {paired['baseline_concurrency']} (each one's peak level above) "
        "and the in-process ceiling, measured back to back in each round (order reversed every "
        "other round), so the VM's drift falls on all three alike. The 20× target is read from "
        "the median of the per-round ratios.",
        "",
        *_table(
            [
                "round",
                "service req/s",
                "baseline req/s",
                "ceiling img/s",
                "service / baseline",
                "ceiling / baseline",
                "same, client CPU paid",
                "service / ceiling",
            ],
            rows,
        ),
    ]


def _ceiling_bound(figs: dict[str, Any]) -> list[str]:
    bound = figs.get("ratio/ceiling_vs_baseline_peak", {}).get("median")
    if bound is None:
        return []
    lines = [
        f"The best in-process layout is **{bound:.1f}×** the baseline's peak req/s: the most "
        "any HTTP server could reach in this run if HTTP and the load generator cost no CPU."
    ]
    with_client = figs.get("ratio/ceiling_with_client_vs_baseline_peak", {}).get("median")
    if with_client is not None:
        lines[0] += (
            f" Adding the load generator's measured CPU per request, which shares the cores, "
            f"gives **{with_client:.1f}×**: the most a server with free HTTP could show here."
        )
    return [*lines, ""]


def _startup_section(run: dict[str, Any]) -> list[str]:
    figs = _figs(run, "startup")
    if not figs:
        return ["_Startup suite not run._", ""]
    params = run["suites"]["startup"].get("params", {})
    sent = params.get("requests_sent", {})
    rows = []
    for target in ("service", "baseline"):
        ready = figs.get(f"{target}/ready_s")
        if not ready:
            continue
        rows.append(
            [
                target,
                _f(ready["median"]),
                _f(ready["min"]),
                _f(ready["max"]),
                str(ready["n"]),
                _f(figs.get(f"{target}/rss_ready_idle", {}).get("median"), 0),
                _f(figs.get(f"{target}/rss_after_warmup", {}).get("median"), 0),
                _f(figs.get(f"{target}/rss_after_requests", {}).get("median"), 0),
                _f(figs.get(f"{target}/rss_peak", {}).get("median"), 0),
                str(sent.get(target, "—")),
            ]
        )
    return [
        f"Ready: {params.get('ready')}. RSS: {params.get('rss')}. Load for the memory run: "
        f"concurrency {params.get('concurrency')}.",
        "",
        *_table(
            [
                "server",
                "ready p50 s",
                "min",
                "max",
                "starts",
                "RSS idle MB",
                "after warm-up MB",
                "after load MB",
                "peak MB",
                "requests",
            ],
            rows,
        ),
    ]


def _accuracy_section(run: dict[str, Any]) -> list[str]:
    suite = run.get("suites", {}).get("accuracy", {})
    figs = suite.get("figures", {})
    if not figs:
        return ["_Accuracy suite not run._", ""]
    params = suite.get("params", {})
    engines = [e for e in ("keras", "fp32", "int8") if f"{e}/bma" in figs]
    measures = ("accuracy", "bma", "auc_macro_ovr", "ece", "mel_sensitivity", "mel_specificity")
    rows = [
        [m, *[_f(figs.get(f"{e}/{m}", {}).get("median")) for e in engines]]
        for m in measures
        if any(f"{e}/{m}" in figs for e in engines)
    ]
    deltas = [
        [k, _f(v["median"], 4), v["unit"]]
        for k, v in sorted(figs.items())
        if k.startswith(("int8_vs_fp32/", "fp32_vs_keras/"))
    ]
    return [
        f"On {params.get('images')} (n = {params.get('n')}). Percent, except AUC and ECE (0–1).",
        "",
        *_table(["measure", *engines], rows),
        "Drops are reference minus candidate (positive: the candidate is worse).",
        "",
        *_table(["delta", "value", "unit"], deltas),
    ]


def _footprint_section(run: dict[str, Any]) -> list[str]:
    suite = run.get("suites", {}).get("footprint", {})
    figs = suite.get("figures", {})
    if not figs:
        return ["_Footprint suite not run._", ""]
    params = suite.get("params", {})
    rows = []
    for target in ("service", "baseline"):
        rows.append(
            [
                target,
                _f(figs.get(f"{target}/packages", {}).get("median"), 0),
                str(figs.get(f"{target}/packages", {}).get("n", "—")),
                _f(figs.get(f"{target}/model", {}).get("median"), 1),
                _f(figs.get(f"{target}/venv_closure_total", {}).get("median"), 0),
                _f(figs.get(f"{target}/venv_install_total", {}).get("median"), 0),
            ]
        )
    skipped = suite.get("skipped", {})
    lines = [
        f"Closure method: {params.get('closure_method')}. Install method: "
        f"{params.get('install_method')}.",
        "",
        *_table(
            [
                "set",
                "packages MB",
                "distributions",
                "model MB",
                "venv total MB (closure)",
                "venv total MB (real offline install)",
            ],
            rows,
        ),
        f"Ratio baseline / service: {_f(_median(figs, 'ratio/baseline_vs_service'))}×. "
        f"Docker image estimate: **{_f(_median(figs, 'service/docker_image_estimate'), 0)} MB**"
        f" — {params.get('docker_estimate')}.",
        "",
        f"Largest serving packages: {_sizes(params.get('service_largest'))}. "
        f"Largest baseline packages: {_sizes(params.get('baseline_largest'))}.",
        "",
    ]
    if skipped:
        lines += [
            "Real-install figures not measured: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
            + ".",
            "",
        ]
    return lines


PEER_ORDER = ("service", "service_noauth", "floor", "bentoml", "pytriton")


def _borrowed(run: dict[str, Any], suite: str) -> list[str]:
    """A note when a section's suite comes from an earlier result file than the report's."""
    entry = run.get("suites", {}).get(suite, {})
    source = entry.get("_from")
    if not source:
        return []
    cpu = entry.get("_cpu") or "CPU not recorded"
    return [
        f"_This suite was not part of the run above; its figures come from `{source}` "
        f"({entry.get('started_utc')}, {cpu})._",
        "",
    ]


def _peers_section(run: dict[str, Any]) -> list[str]:
    suite = run.get("suites", {}).get("peers", {})
    figs = suite.get("figures", {})
    if not figs:
        reasons = "; ".join(f"{k}: {v}" for k, v in suite.get("skipped", {}).items())
        return [f"_Peers suite not run{': ' + reasons if reasons else ''}._", ""]
    params = suite.get("params", {})
    servers = params.get("servers", {})
    rows = []
    for name in PEER_ORDER:
        if f"{name}/rps_c8" not in figs:
            continue
        parity = figs.get(f"{name}/parity_top_class", {})
        rows.append(
            [
                servers.get(name, name),
                _f(_median(figs, f"{name}/p50_c1")),
                _f(_median(figs, f"{name}/p99_c1")),
                _f(_median(figs, f"{name}/rps_c8"), 1),
                _f(_median(figs, f"{name}/rss_after_load"), 0),
                _f(_median(figs, f"{name}/ready_s")),
                _f(_median(figs, f"{name}/venv_mb"), 0),
                _f(_median(figs, f"{name}/server_cpu_ms_c8")),
                f"{parity.get('median', 0):.0f}/{parity.get('n', 0)}" if parity else "—",
            ]
        )
    ratios = []
    for subject, name in [(s, n) for s in PEER_ORDER[:2] for n in PEER_ORDER[1:]]:
        p50 = figs.get(f"ratio/{subject}_vs_{name}/p50_c1")
        rps = figs.get(f"ratio/{subject}_vs_{name}/rps_c8")
        if p50 and rps:
            ratios.append(
                [
                    f"{subject} / {name}",
                    f"{p50['median']:.2f} ({p50['min']:.2f}–{p50['max']:.2f})",
                    f"{rps['median']:.2f} ({rps['min']:.2f}–{rps['max']:.2f})",
                    str(rps["n"]),
                ]
            )
    skipped = suite.get("skipped", {})
    return [
        f"Same model, same {params.get('images')}, same decode and OpenCV preprocessing "
        "(the peers import `app.inference` from this checkout), each peer from its own venv "
        "built from the pins in `benchmarks/peers/*.txt`. "
        f"{params.get('rounds')} interleaved rounds ({params.get('order')}); per round "
        f"{params.get('requests_c1')} requests at c=1 and {params.get('requests_c8')} at c=8 "
        f"after a warm-up; client: {params.get('client')}. Figures are medians over rounds; "
        "other engineers' work shares these 2 cores, so compare the per-round ratios below, "
        "not absolute times across runs.",
        "",
        *_table(
            [
                "server",
                "p50 c=1 ms",
                "p99 c=1 ms",
                "req/s c=8",
                "RSS MB",
                "cold start s",
                "venv MB",
                "server CPU ms/req c=8",
                "same top class",
            ],
            rows,
        ),
        f"RSS: {params.get('rss')}. venv MB: {params.get('venv_method')}. Same top class: "
        "images (of those sent) on which the server's top class equals the service's.",
        "",
        "Median per-round ratios, the service (with API auth, and without it) over each other "
        "server (range over rounds): p50 below 1 and req/s above 1 mean the service is ahead.",
        "",
        *_table(["ratio", "p50 c=1", "req/s c=8", "rounds"], ratios),
        *(
            ["Not measured: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ".", ""]
            if skipped
            else []
        ),
    ]


def _edge_section(run: dict[str, Any]) -> list[str]:
    suite = run.get("suites", {}).get("edge", {})
    figs = suite.get("figures", {})
    if not figs:
        reasons = "; ".join(f"{k}: {v}" for k, v in suite.get("skipped", {}).items())
        return [f"_Edge suite not run{': ' + reasons if reasons else ''}._", ""]
    params = suite.get("params", {})
    budget = params.get("memory_budget_mb")
    rows = [
        ["p50 at c=1", f"{_f(_median(figs, 'c1/latency'))} ms"],
        ["p99 at c=1", f"{_f(figs.get('c1/latency', {}).get('p99'))} ms"],
        ["req/s at c=4", _f(_median(figs, "c4/throughput"), 1)],
        ["p50 at c=4", f"{_f(_median(figs, 'c4/latency'))} ms"],
        ["cold start to ready (median)", f"{_f(_median(figs, 'ready_s'))} s"],
        ["peak RSS (VmHWM)", f"{_f(_median(figs, 'rss_peak'), 0)} MB of {budget} MB"],
        ["RSS after the load", f"{_f(_median(figs, 'rss_after_load'), 0)} MB"],
        ["server CPU per request at c=4", f"{_f(_median(figs, 'c4/server_cpu_per_request'))} ms"],
    ]
    return [
        f"Settings: {params.get('settings')}. Memory ceiling: {params.get('memory_ceiling')}. "
        f"Images: {params.get('images')}; {params.get('requests')} requests per level; "
        f"{params.get('starts')} cold starts. The load generator runs on the other core "
        f"({params.get('client')}).",
        "",
        *_table(["figure", "value"], rows),
    ]


def _ab_section(ab_runs: list[dict[str, Any]]) -> list[str]:
    """The floor-gap candidates, each an A/B of two checkouts (``python -m benchmarks.ab``)."""
    if not ab_runs:
        return ["_No candidate measured yet (`python -m benchmarks.ab A B --label ...`)._", ""]
    rows = []
    for ab in ab_runs:
        ratios = []
        for key in ("p50_c1_ms", "rps_c8"):
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
        "a small change); the median of the per-round ratios B/A.",
        "",
        *_table(["candidate", "date", "rounds", "p50 c=1 B/A", "req/s c=8 B/A", "decision"], rows),
    ]


def _sizes(largest: Any) -> str:
    if not isinstance(largest, dict):
        return "—"
    return ", ".join(f"{name} {size:.0f} MB" for name, size in largest.items())


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


def render(
    run: dict[str, Any], plots: list[str], ab_runs: list[dict[str, Any]] | None = None
) -> str:
    """The whole RESULTS.md for one result file."""
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
    lines += _table(["target", "from", "threshold", "measured", "verdict"], rows)
    borrowed = sorted({s["_from"] for s in run.get("suites", {}).values() if s.get("_from")})
    if borrowed:
        lines += [
            "Suites this run did not include are read from the newest earlier result file "
            f"that has them ({', '.join(f'`{b}`' for b in borrowed)}); each such section "
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
    sections = (
        ("model", "Model: Keras vs ONNX Runtime FP32 and INT8", _model_section),
        ("preprocess", "Preprocessing: OpenCV vs the upstream PIL path", _preprocess_section),
        ("service", "Service under HTTP load", _service_section),
        ("startup", "Start-up and memory", _startup_section),
        ("accuracy", "Accuracy on the test split", _accuracy_section),
        ("footprint", "Footprint on disk", _footprint_section),
        ("peers", "Peers", _peers_section),
        ("edge", "Edge profile: one core, little memory", _edge_section),
    )
    for suite, title, fn in sections:
        lines += [f"## {title}", "", *_borrowed(run, suite), *fn(run)]
    lines += ["## Floor gap: candidates", "", *_ab_section(ab_runs or [])]
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
        "python -m benchmarks model|preprocess|service|startup|footprint|peers|edge [--quick]",
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
            sorted(k for k in model_d if k.startswith("t1/b1/")),
            "model, 1 thread, batch 1",
        )
        cdf(
            axes[0][1],
            model_d,
            sorted(k for k in model_d if k.startswith("t1/b8/")),
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
        for target in ("service", "baseline"):
            pts = sorted(
                (int(k.split("/")[1][1:]), v["median"])
                for k, v in figs.items()
                if k.startswith(f"{target}/c") and k.endswith("/throughput")
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=target)
        best = figs.get("ceiling/best/throughput", {}).get("median")
        if best:
            ax.axhline(best, linestyle="--", color="grey", label="in-process ceiling")
            ax.axhline(best * 0.8, linestyle=":", color="grey", label="80 % of ceiling")
        levels = sorted(
            {int(k.split("/")[1][1:]) for k in figs if k.endswith("/throughput") and "/c" in k}
        )
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
    ab_runs = [json.loads(p.read_text()) for p in sorted((results_dir / "ab").glob("*.json"))]
    target.write_text(render(run, rel, ab_runs))
    return target
