"""`lrun compare` of evaluations: policies scored by `lrun eval` on the same task and episode seeds, compared
episode by episode.

Two evaluations with the same settings and seed meet the same obstacles and the same weakened muscles in each
episode, so the difference of two policies is measured within each episode, where the episodes' own spread
(a big obstacle early ends most policies' run) cancels. The first evaluation is the baseline; each other one
gets the mean difference in distance with a 95 % percentile bootstrap interval over the paired episodes, and
for falls the episodes where only one of the two fell, with McNemar's exact two-sided p-value (the discordant
pairs split as a fair coin would, if the policies fell alike).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrun.analysis.common import EVAL_PLAN_NAME, CompareError, save_figure
from lrun.env.settings import TaskSetting


class PairingError(CompareError):
    """Evaluations that cannot be paired (another task, no episode seeds in common, not an evaluation)."""


def is_evaluation(path: str | Path) -> bool:
    """An `lrun eval` output directory (eval.json and episodes.csv)."""
    path = Path(path)
    return (path / "eval.json").is_file() and (path / "episodes.csv").is_file()


@dataclass
class Evaluation:
    """One evaluation's episodes, by seed."""

    path: Path
    settings: dict
    task: TaskSetting  # canonical: two evaluations are paired only where theirs agree
    seeds: np.ndarray
    distance: np.ndarray
    fell: np.ndarray

    @property
    def label(self) -> str:
        return str(self.path)


def read_evaluation(path: str | Path) -> Evaluation:
    """Read eval.json's settings and episodes.csv's seed, distance and fall of each episode."""
    path = Path(path)
    if not is_evaluation(path):
        raise PairingError(f"{path}: not an evaluation (no eval.json and episodes.csv; run lrun eval first)")
    try:
        settings = json.loads((path / "eval.json").read_text())["settings"]
        if "weakening" not in settings:  # lrun recorded it from 2026-12-03; below difficulty 2 nothing is weakened
            if int(settings["difficulty"]) >= 2:
                raise PairingError(
                    f"{path}: an evaluation at difficulty 2 from before lrun recorded which muscles it weakened: "
                    "evaluate again to compare it"
                )
            settings = {**settings, "weakening": "graders-2017"}
        task = TaskSetting(*(settings[key] for key in ("difficulty", "obstacles", "physics", "weakening")))
        with open(path / "episodes.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        seeds = np.array([int(r["seed"]) for r in rows], dtype=np.int64)
        distance = np.array([float(r["distance"]) for r in rows])
        fell = np.array([{"0": False, "1": True}[r["fell"]] for r in rows])
    except PairingError:
        raise
    except KeyError as exc:
        raise PairingError(f"{path}: unreadable evaluation (no {exc} in it)") from None
    except (OSError, ValueError, TypeError) as exc:
        raise PairingError(f"{path}: unreadable evaluation ({exc})") from None
    if len(np.unique(seeds)) != len(seeds):
        raise PairingError(f"{path}: an episode seed appears twice in episodes.csv")
    return Evaluation(path, settings, task.canonical(), seeds, distance, fell)


def paired_bootstrap_ci(
    differences: np.ndarray, samples: int = 10000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences (resampling the pairs)."""
    rng = np.random.default_rng(seed)
    n = len(differences)
    means = differences[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """McNemar's exact two-sided p-value for discordant pairs (only the first fell, only the second fell)."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


@dataclass
class Paired:
    """An evaluation against the baseline on the episodes they share."""

    baseline: Evaluation
    other: Evaluation
    first: np.ndarray  # the paired episodes' rows in the baseline ...
    second: np.ndarray  # ... and in the other evaluation
    pairs: int
    distance: tuple[float, float]  # mean over the paired episodes: baseline, other
    difference: float  # other - baseline, mean over the pairs
    interval: tuple[float, float]  # 95 % bootstrap interval of that mean
    falls: tuple[int, int]  # falls on the paired episodes: baseline, other
    only_baseline_fell: int
    only_other_fell: int
    p_falls: float

    def row(self) -> dict:
        """The comparison as one CSV row."""
        return {
            "baseline": self.baseline.label,
            "evaluation": self.other.label,
            "pairs": self.pairs,
            "baseline_distance": round(self.distance[0], 4),
            "distance": round(self.distance[1], 4),
            "difference": round(self.difference, 4),
            "difference_low": round(self.interval[0], 4),
            "difference_high": round(self.interval[1], 4),
            "baseline_falls": self.falls[0],
            "falls": self.falls[1],
            "only_baseline_fell": self.only_baseline_fell,
            "only_other_fell": self.only_other_fell,
            "p_falls": round(self.p_falls, 4),
        }


def pair(baseline: Evaluation, other: Evaluation) -> Paired:
    """Compare `other` with `baseline` on the episode seeds both ran; refuses evaluations of different tasks."""
    mine, theirs = baseline.task.to_dict(), other.task.to_dict()
    differ = [f"{key} {mine[key]!r} against {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]
    if differ:
        raise PairingError(
            f"{other.path} is not paired with {baseline.path}: another task ({'; '.join(differ)}); evaluate both "
            "with the same --setting (or task flags) and --seed"
        )
    common, first, second = np.intersect1d(baseline.seeds, other.seeds, return_indices=True)
    if len(common) == 0:
        raise PairingError(
            f"{other.path} and {baseline.path} share no episode seed: evaluate both with the same --seed"
        )
    d0, d1 = baseline.distance[first], other.distance[second]
    f0, f1 = baseline.fell[first], other.fell[second]
    only0, only1 = int(np.sum(f0 & ~f1)), int(np.sum(f1 & ~f0))
    return Paired(
        baseline,
        other,
        first,
        second,
        len(common),
        (float(d0.mean()), float(d1.mean())),
        float((d1 - d0).mean()),
        paired_bootstrap_ci(d1 - d0),
        (int(f0.sum()), int(f1.sum())),
        only0,
        only1,
        mcnemar_exact(only0, only1),
    )


def format_paired(results: list[Paired]) -> str:
    """A table of each evaluation against the baseline."""
    base = results[0].baseline
    lines = [
        f"baseline {base.label}: {len(base.seeds)} episodes, {base.settings.get('setting') or 'task'} "
        f"(difficulty {base.settings.get('difficulty')}, {base.settings.get('obstacles')} obstacles, "
        f"{base.settings.get('physics')} physics), seed {base.settings.get('seed')}",
        "evaluation | paired episodes | mean distance (baseline -> this) | difference, 95 % CI | falls "
        "(baseline -> this) | only the baseline fell / only this | McNemar p",
    ]
    for r in results:
        lines.append(
            f"{r.other.label} | {r.pairs} | {r.distance[0]:.2f} -> {r.distance[1]:.2f} m | "
            f"{r.difference:+.2f} m [{r.interval[0]:+.2f}, {r.interval[1]:+.2f}] | {r.falls[0]} -> {r.falls[1]} | "
            f"{r.only_baseline_fell} / {r.only_other_fell} | {r.p_falls:.3g}"
        )
    return "\n".join(lines)


def plot_paired(results: list[Paired], path: Path) -> Path:
    """Each evaluation's episode distances against the baseline's, episode by episode, marked by who fell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.2), squeeze=False)
    for ax, r in zip(axes[0], results):
        d0, d1 = r.baseline.distance[r.first], r.other.distance[r.second]
        f0, f1 = r.baseline.fell[r.first], r.other.fell[r.second]
        for mask, style, label in (
            (~f0 & ~f1, dict(c="tab:blue", marker="o", s=12), "neither fell"),
            (f0 & f1, dict(c="grey", marker="x", s=16), "both fell"),
            (f0 & ~f1, dict(c="tab:green", marker="^", s=18), "only the baseline fell"),
            (~f0 & f1, dict(c="tab:red", marker="v", s=18), "only this one fell"),
        ):
            if mask.any():
                ax.scatter(d0[mask], d1[mask], label=f"{label} ({int(mask.sum())})", **style)
        top = max(float(d0.max()), float(d1.max()), 1.0) * 1.05
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set_xlabel(f"{r.baseline.label} (m)", fontsize=8)
        ax.set_ylabel(f"{r.other.label} (m)", fontsize=8)
        ax.set_title(f"{r.difference:+.2f} m [{r.interval[0]:+.2f}, {r.interval[1]:+.2f}]", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("distance per episode, paired by seed", fontsize=10)
    return save_figure(fig, path, dpi=110)


def why_not_an_evaluation(path: Path) -> str:
    """What a path given among evaluations is instead: missing, an unfinished evaluation, or something else."""
    if not path.is_dir():
        return f"{path}: no such directory"
    if (path / EVAL_PLAN_NAME).is_file():
        return f"{path}: an unfinished evaluation (finish it with lrun eval ... --resume --out {path})"
    return f"{path}: not an evaluation"


def compare_evaluations(paths: list[str | Path], out: str | Path) -> tuple[list[Paired], str]:
    """The first evaluation as baseline against each other; writes compare.txt, compare.csv and compare.png."""
    if len(paths) < 2:
        raise PairingError("give two evaluations or more: the first is the baseline")
    evaluations = [read_evaluation(p) for p in paths]
    results = [pair(evaluations[0], other) for other in evaluations[1:]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = format_paired(results)
    (out / "compare.txt").write_text(text + "\n")
    with open(out / "compare.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(results[0].row()))
        writer.writeheader()
        writer.writerows(r.row() for r in results)
    plot_paired(results, out / "compare.png")
    return results, text
