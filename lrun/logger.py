"""Per-iteration progress: a line per iteration (a live bar on a terminal) and a CSV of every scalar."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import TextIO

PROGRESS_FILE = "progress.csv"


class ProgressLogger:
    """Writes `progress.csv` in the run directory and prints progress (used by global rank 0 only)."""

    def __init__(self, run_dir: str | Path, total_iterations: int, stream: TextIO | None = None) -> None:
        self.path = Path(run_dir) / PROGRESS_FILE
        self.total = total_iterations
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.columns: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as handle:
                self.columns = next(csv.reader(handle), None)

    def truncate_after(self, iteration: int) -> None:
        """Drop rows logged after `iteration` (work lost since the checkpoint a resume starts from)."""
        if not self.path.exists():
            return
        with open(self.path, newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= iteration]
        with open(self.path, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)

    def log(self, scalars: dict[str, float]) -> None:
        """Append one row and print the iteration's summary."""
        if self.columns is None:
            self.columns = list(scalars)
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([scalars.get(c, "") for c in self.columns])
        line = self.format(scalars)
        if self.live:
            done = int(scalars["iteration"])
            width = 20
            filled = int(width * done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}\x1b[K")
            if done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def format(self, s: dict[str, float]) -> str:
        """One human line from the scalars."""

        def num(key: str, fmt: str = ".3g") -> str:
            value = s.get(key, math.nan)
            return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

        return (
            f"iter {int(s['iteration'])}/{self.total} | steps {int(s['env_steps'])}"
            f" | {num('charts/steps_per_s', '.0f')} steps/s | return {num('charts/episodic_return')}"
            f" len {num('charts/episodic_length', '.0f')}"
            f" (episodes {int(s.get('charts/episodes', 0))}) | pg {num('losses/policy_loss')} v "
            f"{num('losses/value_loss')} ent {num('losses/entropy')} kl {num('losses/approx_kl')} clip "
            f"{num('losses/clipfrac', '.2f')} upd {num('losses/updates', '.0f')}"
            f" | sim {num('time/simulate_s', '.2f')}s comm "
            f"{num('time/communicate_s', '.2f')}s learn {num('time/learn_s', '.2f')}s"
            f" | sim idle {num('time/simulator_wait_fraction', '.0%')}"
        )
