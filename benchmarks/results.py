"""The result file: one JSON per UTC day and commit, merged suite by suite."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from app.files import atomic_write
from benchmarks import machine
from benchmarks.stats import Figure

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_RESULTS_DIR = Path(__file__).resolve().parent / ".work" / "results"
QUANTILES = np.linspace(0, 100, 101)


@dataclass(frozen=True, slots=True)
class CellKey:
    """A model-suite figure: one engine (or a comparison of two) at a thread count and batch."""

    threads: int
    batch: int
    quantity: str  # "latency", "speedup_vs_keras_predict", "int8_speedup_vs_fp32"
    engine: str | None = None  # None: a comparison across engines

    PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"t(\d+)/b(\d+)/(?:([^/]+)/)?([^/]+)")

    def __str__(self) -> str:
        engine = f"{self.engine}/" if self.engine else ""
        return f"t{self.threads}/b{self.batch}/{engine}{self.quantity}"

    @classmethod
    def parse(cls, key: str) -> CellKey | None:
        """The record a stored key names, or None when it is not a cell's."""
        m = cls.PATTERN.fullmatch(key)
        return cls(int(m[1]), int(m[2]), m[4], m[3]) if m else None


@dataclass(frozen=True, slots=True)
class LevelKey:
    """A figure of one HTTP load level: a server (or their ratio) at a concurrency."""

    server: str  # "service", "baseline", "ratio"; "" where a suite loads one server only
    concurrency: int
    quantity: str  # "latency", "throughput", "server_cpu_per_request", "service_vs_ceiling"...

    PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"(?:([^/]+)/)?c(\d+)/([^/]+)")

    def __str__(self) -> str:
        server = f"{self.server}/" if self.server else ""
        return f"{server}c{self.concurrency}/{self.quantity}"

    @classmethod
    def parse(cls, key: str) -> LevelKey | None:
        """The record a stored key names, or None when it is not a load level's."""
        m = cls.PATTERN.fullmatch(key)
        return cls(m[1] or "", int(m[2]), m[3]) if m else None


# A figure's key: a typed record where the figure has dimensions the report reads back, a fixed
# name ("service/ready_s", "paired/service_vs_baseline") where it has none. The result file
# stores str(key), so files written before the records read the same.
Key = CellKey | LevelKey | str


@dataclass
class SuiteResult:
    """What one suite measured, each figure under its ``Key``."""

    name: str
    quick: bool
    figures: dict[str, Figure] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # 101 quantiles per latency sample set: enough to redraw distributions, small to commit.
    distributions: dict[str, list[float]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    duration_s: float = 0.0

    def add(self, key: Key, figure: Figure) -> Figure:
        self.figures[str(key)] = figure
        return figure

    def add_samples(self, key: Key, samples: list[float] | np.ndarray, unit: str) -> Figure:
        """Summarise samples into a figure and keep their quantiles for the plots."""
        figure = self.add(key, Figure.of(samples, unit))
        q = np.percentile(np.asarray(samples, dtype=np.float64), QUANTILES)
        self.distributions[str(key)] = [round(float(v), 4) for v in q]
        return figure

    def skip(self, key: str, reason: str) -> None:
        log.warning("%s: skipped %s: %s", self.name, key, reason)
        self.skipped[key] = reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "started_utc": datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds"),
            "duration_s": round(self.duration_s, 2),
            "params": self.params,
            "figures": {k: v.as_dict() for k, v in sorted(self.figures.items())},
            "skipped": dict(sorted(self.skipped.items())),
            "notes": self.notes,
            "distributions": dict(sorted(self.distributions.items())),
        }


def result_path(results_dir: Path, when: datetime, sha: str) -> Path:
    return results_dir / f"{when:%Y-%m-%d}-{sha}.json"


def _finite(obj: Any) -> Any:
    # json.dumps would write NaN/Infinity, which is not JSON; make them visible as null.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_run(
    results_dir: Path,
    suites: list[SuiteResult],
    quick: bool,
    context: dict[str, Any],
) -> Path:
    """Write (or merge into) today's result file for this commit; return its path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    git = machine.git_state()
    path = result_path(results_dir, now, git["sha"])
    data: dict[str, Any] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
        if data.get("quick") != quick or data.get("schema_version") != SCHEMA_VERSION:
            log.warning(
                "replacing %s (it holds a %s run)", path, "quick" if data.get("quick") else "full"
            )
            data = {}
    data.update(
        {
            "schema_version": SCHEMA_VERSION,
            "created_utc": now.isoformat(timespec="seconds"),
            "git": git,
            "quick": quick,
            "machine": machine.describe(),
            "versions": machine.versions(),
            **context,
        }
    )
    merged = dict(data.get("suites", {}))
    for suite in suites:
        merged[suite.name] = suite.as_dict()
    data["suites"] = merged
    atomic_write(path, json.dumps(_finite(data), indent=1, sort_keys=False) + "\n")
    return path


def load_runs(results_dir: Path) -> list[dict[str, Any]]:
    """Every result file in the folder, oldest first, with its file name under ``_file``."""
    runs = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("unreadable result file %s", path)
            continue
        data["_file"] = path.name
        runs.append(data)
    runs.sort(key=lambda d: str(d.get("created_utc", "")))
    return runs
