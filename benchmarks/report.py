"""What every benchmark shares: the machine it ran on, its table, and ``RESULTS.md``.

Each benchmark prints one table (measured figures and ratios side by side) and appends it, with
the date, the machine and the exact command, to ``benchmarks/RESULTS.md``. Imports only the
standard library, so the GPU benchmark can use it on a bare machine.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RESULTS = Path(__file__).with_name("RESULTS.md")


@dataclass
class Report:
    """One benchmark run: a table plus notes, written to the console and to RESULTS.md."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells, the table {len(self.columns)} columns")
        self.rows.append([_cell(c) for c in cells])

    def markdown(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        lines = [
            "| " + " | ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        return "\n".join(lines)


def publish(report: Report, *, results: Path = RESULTS, record: bool = True) -> None:
    """Print the table and (``record``) append it to RESULTS.md with date, machine, command."""
    section = "\n".join(
        [
            f"## {report.title}",
            "",
            f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {machine()}",
            f"- command: `{command_line()}`",
            f"- commit: {_git_commit()}",
            "",
            report.markdown(),
            "",
            *(f"- {note}" for note in report.notes),
        ]
    ).rstrip()
    print(section, flush=True)  # a benchmark's output is its table
    if record:
        with results.open("a") as out:
            out.write("\n" + section + "\n")
        log.info("appended to %s", results)


def machine() -> str:
    """CPU model, cores, memory, GPU (when torch sees one) and the library versions that matter."""
    parts = [f"{_cpu_model()}, {os.cpu_count()} cores, {_memory_gib():.0f} GiB"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    for package in ("ray", "transformers", "peft"):
        version = _version_of(package)
        if version:
            parts.append(f"{package} {version}")
    parts.append(f"Python {platform.python_version()}")
    return "; ".join(parts)


def command_line() -> str:
    """The command as a user types it (``python -m benchmarks.<name> …``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return shlex.join(["python", "-m", spec.name, *sys.argv[1:]])
    return shlex.join(["python", *sys.argv])


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def alternate(rounds: int, contenders: dict[str, Callable[[], dict[str, float]]]) -> dict[str, list[dict]]:
    """Run each contender once per round, in turn (A B A B …), so that machine drift hits both
    alike; returns every contender's measurements in order."""
    measured: dict[str, list[dict]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        for name, run in contenders.items():
            log.info("round %d/%d: %s", round_index + 1, rounds, name)
            measured[name].append(run())
    return measured


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return math.nan


def _version_of(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str:
    """The short commit, marked when tracked files differ from it. Not shared with
    ``pipelines.registry``: this module must import on a machine without MLflow."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return commit + (" (uncommitted changes)" if dirty else "")


def _git(*args: str) -> str:
    """``git <args>`` in this checkout, stripped stdout; empty when git or the checkout is missing."""
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""
