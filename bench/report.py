"""Figures, statistics and the Markdown report (docs/benchmarks.md)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


@dataclass
class Row:
    metric: str
    value: str
    floor: str = "-"
    target: str = "-"
    met: bool | None = None


@dataclass
class CaseResult:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Context:
    tmp: Path
    logs: Path
    quick: bool = False
    tiny: bool = False
    """Sizes only big enough to show each case runs end to end (the test suite's smoke run);
    its figures mean nothing."""
    profile: bool = False
    colors: itertools.count = field(default_factory=lambda: itertools.count(1))
    shared: dict = field(default_factory=dict)

    def size(self, full: int, quick: int, tiny: int) -> int:
        """The size of a run: `full` by default, smaller with --quick or --tiny."""
        return tiny if self.tiny else quick if self.quick else full

    """Figures one case measures for another (RSS at 10,000 queued, from the submission run)."""

    def color(self) -> int:
        return next(self.colors) % 0xFFFFFF


def mark(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "-"}[met]


def render(
    results: list[CaseResult],
    machine: dict[str, str],
    command: str,
    total_seconds: float,
    preamble: str,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m bench` (the `bench` nox session); do not edit by hand, rerun it.",
        "",
        f"- **Command:** `{command}` ({total_seconds:.0f} s in all)",
        f"- **Date:** {machine['date']}, commit `{machine['commit']}`",
        f"- **Machine:** {machine['cpu']}, {machine['memory']} RAM, {machine['os']}, "
        f"Python {machine['python']}, PostgreSQL {machine['postgres']}",
        "",
        preamble.strip(),
        "",
        "## Summary",
        "",
        "| | figure | comfyui-server | floor (emulator driven directly) | target | |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        for row in result.rows:
            lines.append(
                f"| {result.key} | {row.metric} | {row.value} | {row.floor} | {row.target} "
                f"| {mark(row.met)} |"
            )
    for result in results:
        lines += ["", f"## {result.key}. {result.title}", ""]
        lines += [f"- {note}" for note in result.notes]
        lines.append(f"- Run time of this case: {result.seconds:.0f} s.")
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
