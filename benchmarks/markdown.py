"""Markdown pieces the suites' RESULTS.md sections share: numbers, tables, figure look-ups."""

from __future__ import annotations

from typing import Any


def figures(run: dict[str, Any], suite: str) -> dict[str, dict[str, Any]]:
    """The suite's figures in a result file, by key (empty when the suite did not run)."""
    return dict(run.get("suites", {}).get(suite, {}).get("figures", {}))


def median(figs: dict[str, dict[str, Any]], key: str) -> Any:
    return figs.get(key, {}).get("median")


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table: ``digits`` decimals below 100, none above, a dash when missing."""
    if not isinstance(value, int | float):
        return "—"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, ""]


def borrowed(run: dict[str, Any], suite: str) -> list[str]:
    """A note when a section's suite comes from an earlier result file than the report's."""
    entry = run.get("suites", {}).get(suite, {})
    source = entry.get("_from")
    if not source:
        return []
    cpu = entry.get("_cpu") or "CPU not recorded"
    return [
        f"_This suite was not part of the run above; its figures come from `{source}` "
        f"({entry.get('started_utc')}, {cpu})._",
        "",
    ]
