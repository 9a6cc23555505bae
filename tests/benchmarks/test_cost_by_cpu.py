"""RESULTS.md's table of the served model's cost by CPU: every full run of the same file."""

from __future__ import annotations

from typing import Any

from benchmarks.report import cost_by_cpu, render


def _run(name: str, sha: str, ms: float, flags: dict[str, bool], quick: bool = False) -> Any:
    return {
        "_file": name,
        "quick": quick,
        "models": {"fp32": {"sha256": sha}},
        "machine": {"cpu": {"model": "CPU " + name, "flags": flags}},
        "suites": {
            "model": {
                "figures": {
                    "t1/b1/ort_fp32/per_image": {"median": ms},
                    "t1/b8/ort_fp32/per_image": {"median": ms * 0.9},
                }
            }
        },
    }


AVX512 = {"avx2": True, "avx512f": True, "avx512_vnni": True}
AVX2 = {"avx2": True, "avx512f": False, "avx512_vnni": False}


def test_rows_are_the_full_runs_of_the_same_file_with_their_budget_verdict() -> None:
    runs = [
        _run("old-model.json", "aaa", 1.2, AVX2),
        _run("zen4.json", "bbb", 4.61, AVX512),
        _run("quick.json", "bbb", 30.0, AVX2, quick=True),
        _run("zen2.json", "bbb", 10.4, AVX2),
    ]
    lines = cost_by_cpu(runs[-1], runs)
    rows = [line for line in lines if line.startswith("| `")]
    assert [r.split(" | ")[0] for r in rows] == ["| `zen4.json`", "| `zen2.json`"]
    assert "AVX-512 + VNNI" in rows[0] and "4.61" in rows[0] and "within" in rows[0]
    assert "AVX2 only" in rows[1] and "10.40" in rows[1] and "**over**" in rows[1]


def test_no_table_without_a_timed_run() -> None:
    assert cost_by_cpu({"suites": {}}, []) == []
    assert "cost by CPU" not in render({"suites": {}}, [])
