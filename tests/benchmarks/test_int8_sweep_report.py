"""RESULTS.md carries the INT8 recipes tried for the shipped model, beside the model card."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report import int8_sweep_lines, render

SWEEP = Path(__file__).resolve().parents[2] / "models" / "card" / "int8_sweep.json"


def test_every_recipe_is_a_row_with_its_gates_and_speed_ups() -> None:
    sweep = json.loads(SWEEP.read_text())
    lines = int8_sweep_lines(sweep)
    text = "\n".join(lines)
    for recipe in sweep["recipes"]:
        row = next(line for line in lines if line.startswith(f"| {recipe['recipe']} |"))
        assert ("passed" if recipe["gates_passed"] else "failed") in row
        assert f"{recipe['speedup']['batch1']:.2f}x" in row
    assert f"Verdict: {sweep['verdict']}." in text
    assert ("without" not in text) == sweep["cpu"]["avx512_vnni"]


def test_no_sweep_no_section() -> None:
    assert int8_sweep_lines(None) == []


def test_results_show_each_cpu_s_sweep_in_turn() -> None:
    sweep = json.loads(SWEEP.read_text())
    other = {**sweep, "cpu": {**sweep["cpu"], "model": "Another CPU", "avx512_vnni": False}}
    other["recipes"] = [{**r, "speedup": {"batch1": 0.5, "batch8": 0.75}} for r in sweep["recipes"]]

    text = render({"suites": {}}, [], int8_sweeps=[sweep, other])

    first = text.index(f"{sweep['cpu']['model']}, with")
    second = text.index("Another CPU, without AVX512-VNNI")
    assert first < second
    assert text[second:].count("| 0.50x | 0.75x |") == len(sweep["recipes"])
