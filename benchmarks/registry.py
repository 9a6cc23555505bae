"""Every benchmark suite, in the order ``python -m benchmarks run`` runs them and RESULTS.md
shows them. Adding a benchmark: a module that exports ``SUITE`` (``benchmarks.suite.Suite``)
and one line here."""

from __future__ import annotations

from benchmarks import (
    edge,
    evaluation,
    footprint,
    model,
    preprocessing,
    scaleout,
    service,
    startup,
)
from benchmarks.peers import suite as peers
from benchmarks.suite import Suite

SUITES: tuple[Suite, ...] = (
    model.SUITE,
    preprocessing.SUITE,
    service.SUITE,
    startup.SUITE,
    evaluation.SUITE,
    footprint.SUITE,
    peers.SUITE,
    edge.SUITE,
    scaleout.SUITE,
)
NAMES = tuple(s.name for s in SUITES)


def suite_named(name: str) -> Suite:
    for suite in SUITES:
        if suite.name == name:
            return suite
    raise KeyError(f"no benchmark suite {name!r}; the suites are {', '.join(NAMES)}")
