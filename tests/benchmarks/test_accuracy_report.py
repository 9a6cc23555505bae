"""RESULTS.md's accuracy table: figures in 0-1 keep enough decimals to be read against a target."""

from __future__ import annotations

from benchmarks.evaluation import _accuracy_section


def test_auc_is_not_rounded_up_to_its_target() -> None:
    figures = {
        "fp32/bma": {"median": 71.23},
        "fp32/auc_macro_ovr": {"median": 0.9481},
        "fp32/ece": {"median": 0.0452},
    }
    lines = _accuracy_section({"suites": {"accuracy": {"figures": figures, "params": {}}}})
    assert "| auc_macro_ovr | 0.948 |" in lines
    assert "| ece | 0.045 |" in lines
    assert "| bma | 71.23 |" in lines
