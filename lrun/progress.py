"""A run directory's `progress.csv` (every scalar `lrun train` logged, one row per iteration), read in one place:
`lrun report`, `lrun compare`, the benchmarks and the transfer study all use `load_progress`, as every plot and
benchmark of Stable-Baselines3 uses its `load_results`. Users can too:

    from lrun.progress import load_progress, smooth
    progress = load_progress("runs/walk-sac")
    steps, distance = progress["env_steps"], smooth(progress["charts/distance"], 10)

numpy only (no pandas): `lrun.logger` writes the file, this module reads it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROGRESS_FILE = "progress.csv"


def progress_path(run_dir: str | Path) -> Path:
    """Where a run logs its scalars."""
    return Path(run_dir) / PROGRESS_FILE


def _number(text: str | None) -> float:
    # an empty cell: a column that appeared after this row was logged (the logger widens its header), or an
    # algorithm's own column in a row another one logged
    return math.nan if text in ("", None) else float(text)


@dataclass
class Progress:
    """A run's logged scalars as float columns in the file's order: one value per logged iteration, NaN where
    a row has none (a column that appeared later, an iteration in which no episode ended)."""

    path: Path
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        """The rows (logged iterations)."""
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> np.ndarray:
        """A column; KeyError if the run never logged it."""
        return self.columns[name]

    def get(self, name: str) -> np.ndarray:
        """A column, all NaN if the run never logged it (e.g. an algorithm's own loss in another's run)."""
        return self.columns[name] if name in self.columns else np.full(len(self), math.nan)

    def rows(self) -> list[dict[str, float]]:
        """Row by row, each as {column: value}."""
        return [{name: float(values[i]) for name, values in self.columns.items()} for i in range(len(self))]

    def by_iteration(self) -> dict[int, dict[str, float]]:
        """The rows keyed by their iteration."""
        return {int(row["iteration"]): row for row in self.rows()}


def load_progress(run_dir: str | Path) -> Progress:
    """Read RUN_DIR/progress.csv (FileNotFoundError where the run has none yet)."""
    path = progress_path(run_dir)
    with open(path, newline="") as handle:
        table = list(csv.reader(handle))
    if not table:
        return Progress(path, {})
    header, rows = table[0], [row for row in table[1:] if row]
    columns = {
        name: np.array([_number(row[i] if i < len(row) else "") for row in rows], dtype=float)
        for i, name in enumerate(header)
    }
    return Progress(path, columns)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points, ignoring NaN (iterations in which no episode ended)."""
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        if np.isfinite(chunk).any():
            out[i] = np.nanmean(chunk)
    return out
