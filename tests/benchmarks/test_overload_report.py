"""RESULTS.md's overload section: every kept run of ``python -m benchmarks.overload`` is a row,
with the probe failures' reasons and the machine and command it ran with."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.overload import load_runs, section
from benchmarks.report import render


def _run(label: str, created: str, failed: object) -> dict[str, object]:
    return {
        "clients": 1000,
        "ok_200": {"n": 330, "p50_ms": 4710.5},
        "refused_503": {"n": 24937, "p50_ms": 701.8, "p99_ms": 1127.6},
        "other_errors": 0,
        "client_timeouts_10s": 0,
        "ready_probe": {"n": 9, "p50_ms": 974.7, "p99_ms": 2170.1},
        "ready_probe_own_process": {"n": 17, "failed": failed, "p50_ms": 208.3, "p99_ms": 2588.6},
        "rss_before_mb": 213.2,
        "rss_peak_mb": 584.6,
        "rss_after_idle_mb": 354.0,
        "created_utc": created,
        "label": label,
        "git": {"sha": "927bffc", "dirty": True},
        "cpu": {"model": "AMD EPYC", "arch": "x86_64", "usable_cores": 2, "host_cores": 2},
        "load_average_before": [5.34, 6.0, 6.5],
        "load_average_after": [5.52, 6.0, 6.5],
        "command": "python -m benchmarks.overload --clients 1000 --seconds 20 --idle 30",
    }


def test_every_kept_run_is_a_row_oldest_first(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text(
        json.dumps(_run("after", "2026-12-04T19:43:00+00:00", {"503 ['database']": 4}))
    )
    (tmp_path / "a.json").write_text(json.dumps(_run("before", "2026-12-04T19:37:00+00:00", 0)))
    runs = load_runs(tmp_path)
    assert [r["label"] for r in runs] == ["before", "after"]
    text = "\n".join(section(runs))
    before, after = (line for line in text.splitlines() if line.startswith("| 2026"))
    assert "| before |" in before and "(17 ok, 0 failed)" in before
    assert "702 / 1128" in after and "failed: 503 ['database'] ×4" in after
    assert "927bffc*" in after and "5.3 → 5.5" in after and "213 → 585 → 354" in after
    assert "AMD EPYC (x86_64), 2 usable cores of 2" in text
    assert "`python -m benchmarks.overload --clients 1000 --seconds 20 --idle 30`" in text


def test_results_md_has_the_section_even_without_runs() -> None:
    text = render({"suites": {}}, [])
    assert "## Overload (issue 16)" in text and "No run kept yet" in text
