"""Helpers every analysis module shares: the Wilson interval of a proportion, writing a matplotlib figure,
`lrun compare`'s error, and the name and reader of an evaluation's plan file (here, not in lrun.evaluate, so the
readers of results need not import torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: What `lrun eval` writes in OUT before its first episode: the checkpoint and settings a --resume must match.
EVAL_PLAN_NAME = "eval-plan.json"


def planned_episodes(out: Path) -> int | None:
    """The episode count of the evaluation in `out` (its eval-plan.json), or None."""
    try:
        return int(json.loads((Path(out) / EVAL_PLAN_NAME).read_text())["episodes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class CompareError(ValueError):
    """Runs or evaluations that cannot be compared (no progress.csv or config, another task, no shared seed)."""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (sound for small n and for 0 or n successes)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 or n successes one end is the rate itself: exactly, not off by a rounding error
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def save_figure(fig, path: str | Path, dpi: int) -> Path:
    """Lay out, write (creating the directory) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
