"""The performance targets from the service (issue 5), conversion (issue 4) and peers (issue 13)
issues, checked against a result file. Each suite states its own (``Suite.targets``); a target
that cannot be measured says so, and is never met."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def fig(run: dict[str, Any], suite: str, key: object, stat: str = "median") -> float | None:
    """One statistic of a figure in a result file; ``key`` a ``results.Key`` or its text."""
    value = run.get("suites", {}).get(suite, {}).get("figures", {}).get(str(key), {}).get(stat)
    return float(value) if isinstance(value, int | float) else None


def check(
    target: str, source: str, threshold: str, value: float | None, ok: bool | None, fmt: str
) -> Verdict:
    measured = "—" if value is None else fmt.format(value)
    return Verdict(target, source, threshold, measured, None if value is None else ok)


# The targets table follows issues 5, 4 and 13 (service first); suites not named here follow
# in the registry's order.
ISSUE_ORDER = ("service", "startup", "model", "accuracy", "peers", "edge")


def evaluate_targets(run: dict[str, Any]) -> list[Verdict]:
    """Every suite's targets, in the order the issues list them."""
    from benchmarks.registry import SUITES  # the suites import this module's helpers

    def rank(name: str) -> int:
        return ISSUE_ORDER.index(name) if name in ISSUE_ORDER else len(ISSUE_ORDER)

    ordered = sorted(SUITES, key=lambda s: rank(s.name))  # stable: the registry's order within
    return [verdict for suite in ordered for verdict in suite.targets(run)]
