"""`lrun report`: training progress from a run's store and logs, as a table and PNG learning curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lrun.analysis.common import save_figure, wilson_interval
from lrun.progress import load_progress, progress_path
from lrun.store.reader import RunStore


def build_report(run_dir: str | Path) -> dict:
    """Per-iteration and per-difficulty summaries of every finished episode in the run (live runs too), and where
    the episodes of its last tenth fell, where they met obstacles or weakened muscles."""
    run_dir = Path(run_dir)
    with RunStore(run_dir) as store:
        names = ["policy_version", "return", "length", "distance", "fell", "integrator_failure", "difficulty"]
        ep = store.episodes([*names, "obstacles", "psoas"])
        n_steps = len(store.steps(["policy_version"])["policy_version"])
    progress = load_progress(run_dir).by_iteration() if progress_path(run_dir).is_file() else {}
    iterations = []
    versions = sorted(set(ep["policy_version"].tolist()) | {i - 1 for i in progress})
    for v in versions:
        mask = ep["policy_version"] == v
        ret, dist = ep["return"][mask], ep["distance"][mask]
        log = progress.get(v + 1, {})
        iterations.append(
            {
                "iteration": v + 1,
                "env_steps": log.get("env_steps", np.nan),
                "episodes": int(mask.sum()),
                "mean_return": float(ret.mean()) if mask.any() else np.nan,
                "median_return": float(np.median(ret)) if mask.any() else np.nan,
                "mean_distance": float(np.nanmean(dist)) if mask.any() and not np.isnan(dist).all() else np.nan,
                "fall_rate": float(ep["fell"][mask].mean()) if mask.any() else np.nan,
                "steps_per_s": log.get("charts/steps_per_s", np.nan),
            }
        )
    by_difficulty = []
    for d in sorted(set(ep["difficulty"].tolist())):
        mask = ep["difficulty"] == d
        falls = int(ep["fell"][mask].sum())
        by_difficulty.append(
            {
                "difficulty": int(d),
                "episodes": int(mask.sum()),
                "mean_return": float(ep["return"][mask].mean()),
                "mean_distance": float(np.nanmean(ep["distance"][mask]))
                if not np.isnan(ep["distance"][mask]).all()
                else np.nan,
                "fall_rate": falls / int(mask.sum()),
                "fall_rate_ci95": wilson_interval(falls, int(mask.sum())),
                "integrator_failures": int(ep["integrator_failure"][mask].sum()),
            }
        )
    return {
        "iterations": iterations,
        "by_difficulty": by_difficulty,
        "stored_steps": n_steps,
        "episodes": len(ep["return"]),
        "falls": late_falls(ep),
    }


def late_falls(ep: dict[str, np.ndarray]) -> dict | None:
    """lrun.analysis.falls' breakdown of the episodes of the run's last tenth of iterations (at least its last),
    or None where those met no obstacle and no weakened muscle (difficulty 0)."""
    from lrun.analysis.falls import falls_breakdown

    hard = ep["difficulty"] > 0
    if not hard.any():
        return None
    versions = np.unique(ep["policy_version"][hard])
    first = versions[-max(1, len(versions) // 10)]
    mask = hard & (ep["policy_version"] >= first)
    falls = falls_breakdown(ep["distance"][mask], ep["fell"][mask], ep["obstacles"][mask], ep["psoas"][mask])
    return {"iterations": [int(first) + 1, int(versions[-1]) + 1], **falls}


def format_report(report: dict) -> str:
    """The report as aligned text tables."""

    def f(x: float, fmt: str) -> str:
        return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)

    lines = [
        f"{report['episodes']} finished episodes, {report['stored_steps']} stored steps",
        "",
        f"{'iter':>5} {'env steps':>10} {'episodes':>8} {'mean ret':>9} {'median ret':>10} "
        f"{'distance':>8} {'falls':>6} {'steps/s':>8}",
    ]
    for r in report["iterations"]:
        lines.append(
            f"{r['iteration']:>5} {f(r['env_steps'], '.0f'):>10} {r['episodes']:>8} "
            f"{f(r['mean_return'], '.3f'):>9} {f(r['median_return'], '.3f'):>10} "
            f"{f(r['mean_distance'], '.2f'):>8} {f(r['fall_rate'], '.0%'):>6} {f(r['steps_per_s'], '.0f'):>8}"
        )
    lines += [
        "",
        f"{'difficulty':>10} {'episodes':>8} {'mean ret':>9} {'distance':>8} {'falls (95% CI)':>22} "
        f"{'integrator failures':>20}",
    ]
    for d in report["by_difficulty"]:
        lo, hi = d["fall_rate_ci95"]
        falls = f"{d['fall_rate']:.1%} ({lo:.1%}-{hi:.1%})"
        lines.append(
            f"{d['difficulty']:>10} {d['episodes']:>8} {d['mean_return']:>9.3f} "
            f"{f(d['mean_distance'], '.2f'):>8} {falls:>22} {d['integrator_failures']:>20}"
        )
    late = report.get("falls")
    if late:
        from lrun.analysis.falls import format_breakdown

        first, last = late["iterations"]
        lines += ["", f"where the episodes of iterations {first}-{last} ({late['episodes']}) fell:"]
        lines += format_breakdown(late)
    return "\n".join(lines)


def windowed_mean(values: np.ndarray, weights: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean of per-iteration `values` over the last `window` iterations, each weighted by its episodes
    (`weights`), so a window is the mean over its episodes; NaN values (iterations without episodes) weigh 0."""
    values, weights = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    weights = np.where(np.isfinite(values), weights, 0.0)
    total = np.cumsum(np.insert(np.nan_to_num(values) * weights, 0, 0.0))
    count = np.cumsum(np.insert(weights, 0, 0.0))
    start = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    summed, counted = total[1:] - total[start], count[1:] - count[start]
    return np.where(counted > 0, summed / np.where(counted > 0, counted, 1.0), np.nan)


def plot_report(report: dict, path: str | Path) -> Path:
    """PNG learning curves: return, distance and fall rate against env steps (or iteration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["iterations"] if r["episodes"] > 0]
    x = np.array([r["env_steps"] for r in rows], dtype=float)
    label = "env steps"
    if len(x) == 0 or np.isnan(x).any():
        x, label = np.array([r["iteration"] for r in rows], dtype=float), "iteration"
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    series = [
        ("mean_return", "mean episodic return"),
        ("mean_distance", "mean distance (m)"),
        ("fall_rate", "fall rate"),
    ]
    # Long runs have a handful of episodes per iteration: a trailing mean over ~1/25 of the run (by episodes)
    # shows the trend that the per-iteration points hide.
    window = len(rows) // 25
    episodes = np.array([r["episodes"] for r in rows], dtype=float)
    for ax, (key, title) in zip(axes, series):
        values = np.array([r[key] for r in rows], dtype=float)
        faint = {"alpha": 0.35} if window > 1 else {}
        ax.plot(x, values, marker="o", ms=3, lw=1.2, label="mean", **faint)
        if key == "mean_return" and window <= 1:
            ax.plot(x, [r["median_return"] for r in rows], lw=0.8, ls="--", label="median")
        if window > 1:
            trend = windowed_mean(values, episodes, window)
            ax.plot(x, trend, lw=2.0, color="black", label=f"last {window} iterations' episodes")
        if key == "fall_rate":
            ax.set_ylim(-0.05, 1.05)
        if key == "mean_return":
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=100)
