"""The performance targets from the service (issue 5), conversion (issue 4) and peers (issue 13)
issues, checked against a result file. A target that cannot be measured says so; it is never met."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conversion.metrics import (
    INT8_MAX_BMA_DROP,
    INT8_MAX_MEL_RECALL_DROP,
    INT8_MAX_RECALL_DROP,
    INT8_MIN_TOP1,
)


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    source: str
    threshold: str
    measured: str
    met: bool | None  # None: not measured

    @property
    def label(self) -> str:
        return {True: "met", False: "**MISSED**", None: "not measured"}[self.met]


GATES_TEXT = (
    f"top-1 ≥ {INT8_MIN_TOP1 * 100:g} %; drops ≤ {INT8_MAX_BMA_DROP * 100:g} (BMA), "
    f"≤ {INT8_MAX_RECALL_DROP * 100:g} (any class), ≤ {INT8_MAX_MEL_RECALL_DROP * 100:g} "
    "(mel recall) pt"
)


def _fig(run: dict[str, Any], suite: str, key: str, stat: str = "median") -> float | None:
    value = run.get("suites", {}).get(suite, {}).get("figures", {}).get(key, {}).get(stat)
    return float(value) if isinstance(value, int | float) else None


def _peak_rps(run: dict[str, Any], target: str) -> float | None:
    figures = run.get("suites", {}).get("service", {}).get("figures", {})
    values = [
        f["median"]
        for k, f in figures.items()
        if k.startswith(f"{target}/c") and k.endswith("/throughput")
    ]
    return max(values) if values else None


def _check(
    target: str, source: str, threshold: str, value: float | None, ok: bool | None, fmt: str
) -> Verdict:
    measured = "—" if value is None else fmt.format(value)
    return Verdict(target, source, threshold, measured, None if value is None else ok)


def evaluate_targets(run: dict[str, Any]) -> list[Verdict]:
    """Every target of issues 4 and 5, in the order the issues list them."""
    out: list[Verdict] = []
    p50 = _fig(run, "service", "service/c1/latency")
    out.append(
        _check(
            "HTTP p50 latency at concurrency 1",
            "service #5",
            "≤ 8 ms",
            p50,
            p50 is not None and p50 <= 8.0,
            "{:.1f} ms",
        )
    )
    share = _fig(run, "service", "ratio/c8/service_vs_ceiling")
    out.append(
        _check(
            "Throughput at concurrency 8 vs in-process ceiling",
            "service #5",
            "≥ 80 %",
            None if share is None else share * 100,
            share is not None and share >= 0.8,
            "{:.1f} %",  # one decimal: runs here land within a point of the line
        )
    )
    paired = _fig(run, "service", "paired/service_vs_baseline")
    times: float | None
    if paired is not None:
        # Measured round by round, each round within seconds: the median of those ratios.
        times, note = paired, _paired_note(run)
    else:
        s_peak, b_peak = _peak_rps(run, "service"), _peak_rps(run, "baseline")
        times = s_peak / b_peak if s_peak and b_peak else None
        note = _bound_note(run)
    out.append(
        _check(
            "Peak throughput vs upstream Flask + Keras baseline",
            "service #5",
            "≥ 20×",
            times,
            times is not None and times >= 20,
            "{:.1f}×" + note,
        )
    )
    ready = _fig(run, "startup", "service/ready_s")
    out.append(
        _check(
            "Cold start to ready (median)",
            "service #5",
            "≤ 1.5 s",
            ready,
            ready is not None and ready <= 1.5,
            "{:.2f} s",
        )
    )
    rss = _fig(run, "startup", "service/rss_after_requests")
    n = run.get("suites", {}).get("startup", {}).get("params", {}).get("requests_sent", {})
    out.append(
        _check(
            f"Serving RSS after {n.get('service', 1000)} requests",
            "service #5",
            "≤ 200 MB",
            rss,
            rss is not None and rss <= 200,
            "{:.0f} MB",
        )
    )
    for batch, want in ((1, 1.5), (8, 1.8)):
        speed = _fig(run, "model", f"t1/b{batch}/int8_speedup_vs_fp32")
        out.append(
            _check(
                f"INT8 vs FP32 speed-up, batch {batch}, 1 thread",
                "conversion #4",
                f"≥ {want}×",
                speed,
                speed is not None and speed >= want,
                "{:.2f}×",
            )
        )
    out.append(_accuracy_gates(run))
    out += _peer_targets(run)
    return out


# Issue 13: ahead of what users would pick instead, and close to the bare floor. Each is the
# median of the per-round ratios (service / peer), so drift falls on both sides alike.
PEER_TARGETS = (
    ("bentoml", "rps_c8", "BentoML", "req/s at c=8", 1.5, True),
    ("bentoml", "p50_c1", "BentoML", "p50 at c=1", 0.7, False),
    ("pytriton", "rps_c8", "PyTriton", "req/s at c=8", 1.5, True),
    ("pytriton", "p50_c1", "PyTriton", "p50 at c=1", 0.7, False),
    ("floor", "p50_c1", "the bare ASGI floor", "p50 at c=1", 1.05, False),
    ("floor", "rps_c8", "the bare ASGI floor", "req/s at c=8", 0.95, True),
)


def _peer_targets(run: dict[str, Any]) -> list[Verdict]:
    out = []
    for peer, measure, who, what, bound, at_least in PEER_TARGETS:
        key = f"ratio/service_vs_{peer}/{measure}"
        value = _fig(run, "peers", key)
        low, high = _fig(run, "peers", key, "min"), _fig(run, "peers", key, "max")
        n = run.get("suites", {}).get("peers", {}).get("figures", {}).get(key, {}).get("n")
        ok = value is not None and (value >= bound if at_least else value <= bound)
        spread = f" (rounds: {n}, {low:.2f}–{high:.2f}×)" if low is not None and high else ""
        out.append(
            _check(
                f"{what} vs {who}",
                "peers #13",
                f"{'≥' if at_least else '≤'} {bound}×",
                value,
                ok,
                "{:.2f}×" + spread,
            )
        )
    peak = _fig(run, "edge", "rss_peak")
    budget = run.get("suites", {}).get("edge", {}).get("params", {}).get("memory_budget_mb", 512)
    out.append(
        _check(
            "Edge profile: peak RSS on one core",
            "edge #13",
            f"≤ {budget} MB",
            peak,
            peak is not None and peak <= budget,
            "{:.0f} MB",
        )
    )
    return out


def _paired_note(run: dict[str, Any]) -> str:
    def span(key: str) -> str:
        low, high = _fig(run, "service", key, "min"), _fig(run, "service", key, "max")
        return f"{low:.1f}–{high:.1f}×"

    rounds = run["suites"]["service"].get("params", {}).get("paired", {}).get("rounds", "?")
    ceiling = _fig(run, "service", "paired/ceiling_vs_baseline")
    note = (
        f", median of {rounds} paired rounds ({span('paired/service_vs_baseline')}); "
        f"in-process bound {ceiling:.1f}× ({span('paired/ceiling_vs_baseline')})"
    )
    with_client = _fig(run, "service", "paired/ceiling_with_client_vs_baseline")
    if with_client is not None:
        key = "paired/ceiling_with_client_vs_baseline"
        note += f", {with_client:.1f}× ({span(key)}) with the client's CPU"
    return note


def _bound_note(run: dict[str, Any]) -> str:
    bound = _fig(run, "service", "ratio/ceiling_vs_baseline_peak")
    with_client = _fig(run, "service", "ratio/ceiling_with_client_vs_baseline_peak")
    if bound is None:
        return ""
    if with_client is None:
        return f" (in-process bound {bound:.1f}×)"
    return f" (in-process bound {bound:.1f}×, {with_client:.1f}× with the client's CPU)"


def _accuracy_gates(run: dict[str, Any]) -> Verdict:
    acc = run.get("suites", {}).get("accuracy", {})
    figures = acc.get("figures", {})
    needed = (
        "int8_vs_fp32/top1_agreement",
        "int8_vs_fp32/bma_drop",
        "int8_vs_fp32/max_class_recall_drop",
        "int8_vs_fp32/mel_recall_drop",
    )
    values = {k: figures.get(k, {}).get("median") for k in needed}
    if any(v is None for v in values.values()):
        return Verdict(
            "INT8 within the accuracy gates",
            "conversion #4",
            GATES_TEXT,
            "—",
            None,
        )
    agree, bma, cls, mel = (float(values[k]) for k in needed)
    ok = (
        agree >= INT8_MIN_TOP1 * 100
        and bma <= INT8_MAX_BMA_DROP * 100
        and cls <= INT8_MAX_RECALL_DROP * 100
        and mel <= INT8_MAX_MEL_RECALL_DROP * 100
    )
    # Drops are FP32 minus INT8 in points; a negative drop is a gain.
    measured = f"top-1 {agree:.1f} %; drops: BMA {bma:.1f}, worst class {cls:.1f}, mel {mel:.1f} pt"
    return Verdict(
        "INT8 within the accuracy gates",
        "conversion #4",
        GATES_TEXT,
        measured,
        ok,
    )
