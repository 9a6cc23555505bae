"""What a benchmark suite is. Each suite module exports one ``SUITE``; ``benchmarks.registry``
lists them, and the command line, the report and the targets loop over that list."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.artifacts import ModelSet
from benchmarks.results import SuiteResult
from benchmarks.targets import Verdict

Run = dict[str, Any]  # one result file, as written by results.write_run


def no_targets(run: Run) -> list[Verdict]:
    return []


@dataclass(frozen=True, slots=True)
class Suite:
    """One benchmark: how to run it, how RESULTS.md shows it and what it is held to."""

    name: str  # the result file's key and the subcommand (``python -m benchmarks NAME``)
    help: str  # the subcommand's help
    run: Callable[[ModelSet, argparse.Namespace], SuiteResult]
    title: str  # the RESULTS.md section heading
    section: Callable[[Run], list[str]]  # the section's Markdown lines
    targets: Callable[[Run], list[Verdict]] = no_targets  # the issues' targets it measures
    command: bool = True  # False: ``run`` includes it, but it has no subcommand of its own
