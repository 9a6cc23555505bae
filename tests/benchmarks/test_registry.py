"""The benchmark registry: the command line, RESULTS.md and the targets loop over ``SUITES``, so a
new benchmark is one module exporting ``SUITE`` plus one registry line (issue 14, step 6)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from benchmarks.__main__ import parser
from benchmarks.registry import NAMES, SUITES, suite_named
from benchmarks.report import render
from benchmarks.results import CellKey, LevelKey, SuiteResult

REPO = Path(__file__).resolve().parents[2]

TINY_MODULE = '''
"""A tiny suite, added to prove the registry."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.artifacts import ModelSet
from benchmarks.markdown import figures, fmt
from benchmarks.results import SuiteResult
from benchmarks.stats import Figure
from benchmarks.suite import Suite
from benchmarks.targets import Verdict, check, fig


def _run(models: ModelSet, args: argparse.Namespace) -> SuiteResult:
    suite = SuiteResult("tiny", args.quick)
    suite.add_samples("answer/latency", [41.0, 42.0, 43.0], "ms")
    return suite


def _section(run: dict[str, Any]) -> list[str]:
    figs = figures(run, "tiny")
    return [f"The answer took {fmt(figs.get('answer/latency', {}).get('median'))} ms.", ""]


def _targets(run: dict[str, Any]) -> list[Verdict]:
    value = fig(run, "tiny", "answer/latency")
    ok = value is not None and value <= 50
    return [check("Tiny answer time", "tiny #0", "≤ 50 ms", value, ok, "{:.0f} ms")]


SUITE = Suite(
    name="tiny",
    help="a tiny suite",
    run=_run,
    title="Tiny: the answer",
    section=_section,
    targets=_targets,
)
'''


def test_every_suite_has_its_subcommand_section_and_skip_choice() -> None:
    assert len(set(NAMES)) == len(NAMES) == len(SUITES)
    p = parser()
    for suite in SUITES:
        if suite.command:
            assert p.parse_args([suite.name, "--quick"]).command == suite.name
        assert p.parse_args(["run", "--skip", suite.name]).skip == [suite.name]
        lines = suite.section({"suites": {}})  # a run without this suite
        assert lines and "not run" in lines[0], (suite.name, lines[:2])
    text = render({"suites": {}}, [])
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    for suite in SUITES:
        assert f"## {suite.title}" in titles
    assert suite_named("edge").title == "Edge profile: one core, little memory"


def test_typed_keys_read_back_what_they_wrote() -> None:
    suite = SuiteResult("model", quick=True)
    suite.add_samples(CellKey(2, 8, "latency", "ort_int8"), [1.0, 2.0], "ms")
    suite.add_samples(LevelKey("service", 16, "latency"), [3.0], "ms")
    suite.add_samples(LevelKey("", 4, "latency"), [3.0], "ms")
    keys = list(suite.as_dict()["figures"])
    assert keys == ["c4/latency", "service/c16/latency", "t2/b8/ort_int8/latency"]
    assert CellKey.parse(keys[2]) == CellKey(2, 8, "latency", "ort_int8")
    assert CellKey.parse("t1/b1/int8_speedup_vs_fp32") == CellKey(1, 1, "int8_speedup_vs_fp32")
    assert LevelKey.parse(keys[1]) == LevelKey("service", 16, "latency")
    assert LevelKey.parse(keys[0]) == LevelKey("", 4, "latency")
    assert CellKey.parse("paired/service_vs_baseline") is None
    assert LevelKey.parse("ratio/service_vs_bentoml/p50_c1") is None


def test_a_new_suite_needs_one_module_and_one_registry_line(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    shutil.copytree(
        REPO / "benchmarks",
        root / "benchmarks",
        ignore=shutil.ignore_patterns(".work", "results", "plots", "__pycache__", "RESULTS.md"),
    )
    (root / "benchmarks" / "tiny.py").write_text(textwrap.dedent(TINY_MODULE))
    registry = root / "benchmarks" / "registry.py"
    text = registry.read_text()
    assert "    edge.SUITE,\n" in text
    registry.write_text(
        text.replace(
            "    edge.SUITE,\n", "    edge.SUITE,\n    __import__('benchmarks.tiny').tiny.SUITE,\n"
        )
    )
    results = tmp_path / "out" / "results"
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # app and conversion from this checkout
    cli = [sys.executable, "-m", "benchmarks"]
    done = subprocess.run(
        [
            *cli,
            "tiny",
            "--quick",
            "--results-dir",
            str(results),
            "--manifest",
            str(REPO / "models" / "manifest.json"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Tiny answer time" in done.stdout and "42 ms (target ≤ 50 ms)" in done.stdout
    (result,) = results.glob("*.json")
    figure = json.loads(result.read_text())["suites"]["tiny"]["figures"]["answer/latency"]
    assert figure["median"] == 42.0 and figure["n"] == 3
    report = (results.parent / "RESULTS.md").read_text()
    assert "## Tiny: the answer" in report and "The answer took 42.00 ms." in report
    assert "| Tiny answer time | tiny #0 | ≤ 50 ms | 42 ms | met |" in report
    helped = subprocess.run(
        [*cli, "run", "--help"], cwd=root, capture_output=True, text=True, timeout=120, env=env
    )
    assert "tiny" in helped.stdout
