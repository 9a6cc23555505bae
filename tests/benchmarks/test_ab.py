"""The floor-gap table in RESULTS.md: one row per A/B (``python -m benchmarks.ab``)."""

from __future__ import annotations

from benchmarks.report import _ab_section


def test_ab_rows_give_the_median_ratio_and_cpu_time_where_it_was_recorded() -> None:
    older = {
        "label": "older",
        "created_utc": "2026-12-04T16:20:30+00:00",
        "p50_c1_ms": {"A": [10.0, 10.0, 10.0], "B": [9.0, 11.0, 10.0]},
        "rps_c8": {"A": [100.0, 100.0, 100.0], "B": [90.0, 120.0, 100.0]},
        "decision": "not kept",
    }
    newer = {
        **older,
        "label": "newer",
        "server_cpu_ms_c8": {"A": [30.0, 30.0, 30.0], "B": [33.0, 36.0, 30.0]},
    }
    lines = _ab_section([older, newer])
    assert "CPU/req c=8 B/A" in lines[2]
    [old_row] = [line for line in lines if line.startswith("| older")]
    [new_row] = [line for line in lines if line.startswith("| newer")]
    assert "| 1.00 (0.90–1.10) | 1.00 (0.90–1.20) | — | — | not kept |" in old_row
    assert "| 1.10 (1.00–1.20) | — | not kept |" in new_row
    newest = {**newer, "label": "newest", "loop_cpu_ms_c8": {"A": [2.0, 2.0], "B": [1.6, 1.8]}}
    [row] = [line for line in _ab_section([newest]) if line.startswith("| newest")]
    assert "| 1.10 (1.00–1.20) | 0.85 (0.80–0.90) | not kept |" in row


def test_a_setting_for_b_is_name_equals_value_and_recorded(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import argparse
    import json

    import pytest

    from benchmarks import ab
    from benchmarks.peers.suite import Rounds

    assert ab.parse_env("APP_MICROBATCH_MAX=1") == ("APP_MICROBATCH_MAX", "1")
    assert ab.parse_env("APP_X=a=b") == ("APP_X", "a=b")
    for bad in ("APP_X", "=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            ab.parse_env(bad)
    monkeypatch.setattr(ab, "AB_DIR", tmp_path)
    path = ab.record("one batch", Rounds(), 30, {"APP_MICROBATCH_MAX": "1"})
    assert json.loads(path.read_text())["env_b"] == {"APP_MICROBATCH_MAX": "1"}
    again = ab.record("one batch", Rounds(), 30)  # the same label the same day: both kept
    assert again != path and path.exists() and json.loads(again.read_text())["env_b"] == {}
