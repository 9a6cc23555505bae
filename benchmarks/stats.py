"""Figures: every measured quantity with its unit, count and distribution summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

FIGURE_FIELDS = ("unit", "n", "median", "p95", "p99", "min", "max")


@dataclass(frozen=True, slots=True)
class Figure:
    """A summary of ``n`` samples (or one value, n=1) in ``unit``."""

    unit: str
    n: int
    median: float
    p95: float
    p99: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float] | np.ndarray, unit: str) -> Figure:
        """Summarise samples; an empty sample set is a bug in the suite, not a figure."""
        values = np.asarray(samples, dtype=np.float64)
        if values.size == 0:
            raise ValueError("no samples")
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return cls(
            unit=unit,
            n=int(values.size),
            median=float(p50),
            p95=float(p95),
            p99=float(p99),
            min=float(values.min()),
            max=float(values.max()),
            mean=float(values.mean()),
        )

    @classmethod
    def value(cls, value: float, unit: str, n: int = 1) -> Figure:
        """A single derived value (a ratio, a size, a rate over ``n`` requests)."""
        v = float(value)
        return cls(unit=unit, n=n, median=v, p95=v, p99=v, min=v, max=v, mean=v)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        return cls(**{k: data[k] for k in (*FIGURE_FIELDS, "mean")})


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN-free: a zero denominator gives 0 (and is flagged upstream)."""
    if denominator == 0 or not math.isfinite(denominator) or not math.isfinite(numerator):
        return 0.0
    return numerator / denominator


def is_valid_figure(data: object) -> bool:
    """True when ``data`` is a figure dict with every field present and every number finite."""
    if not isinstance(data, dict) or not isinstance(data.get("unit"), str):
        return False
    if not isinstance(data.get("n"), int) or data["n"] < 1:
        return False
    numbers = [data.get(k) for k in FIGURE_FIELDS[2:]]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers):
        return False
    return bool(data["min"] <= data["median"] <= data["max"])
