"""`lrun compare`: several runs against simulated env steps, grouped by config, with seeds aggregated the way
rliable recommends (Agarwal et al. 2021): the interquartile mean over seeds and a 95 % bootstrap confidence
interval (resampling the seeds), for the task return, the distance and the fall rate of training episodes, and
for any other logged column asked for (`--metric losses/alpha`: what the runs did on the way, e.g. a temperature
that collapsed in the seeds that stalled).

Runs are grouped by their resolved config with the seed, the run directory and the iteration count left out,
so `--seeds` job-array outputs of one stage form one group and different recipes form different groups.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lrun.analysis.common import CompareError
from lrun.analysis.paired import compare_evaluations, is_evaluation, why_not_an_evaluation
from lrun.progress import load_progress, progress_path, smooth

#: metric name -> progress.csv column: the metrics every comparison shows
METRICS = {
    "task_return": "charts/episodic_task_return",
    "distance": "charts/distance",
    "fall_rate": "charts/fall_rate",
}
#: config keys that do not make two runs different recipes
NEUTRAL = {
    "run": (
        "seed",
        "run_dir",
        "iterations",
        "checkpoint_every",
        "sync_check_every",
        "wait_sleep",
        "progress",
        "tensorboard",
    ),
}


@dataclass
class Curve:
    """One run's metrics against env steps."""

    run_dir: Path
    seed: int
    env_steps: np.ndarray
    metrics: dict[str, np.ndarray]
    logged: frozenset[str] = frozenset()
    """Every column the run's progress.csv holds."""


@dataclass
class Group:
    """Runs that share a recipe."""

    label: str
    recipe: dict
    curves: list[Curve] = field(default_factory=list)


def metric_columns(extra: list[str] | None = None) -> dict[str, str]:
    """`METRICS` plus each progress.csv column in `extra` (named by itself), in that order, without repeats (a
    metric of `METRICS` asked for by its name or its column is there already)."""
    metrics = dict(METRICS)
    for column in extra or []:
        if column not in metrics and column not in metrics.values():
            metrics[column] = column
    return metrics


def read_curve(run_dir: Path, metrics: dict[str, str] | None = None) -> tuple[Curve, dict]:
    """A run's curve of `metrics` (default `METRICS`) and its config (CompareError if it has neither)."""
    config_file = run_dir / "config.json"
    if not progress_path(run_dir).is_file() or not config_file.is_file():
        raise CompareError(f"{run_dir}: not an lrun run directory (needs progress.csv and config.json)")
    config = json.loads(config_file.read_text())
    progress = load_progress(run_dir)
    if not len(progress):
        raise CompareError(f"{run_dir}: progress.csv has no rows yet")
    curve = Curve(
        run_dir,
        int(config["run"]["seed"]),
        progress.get("env_steps"),
        {metric: progress.get(col) for metric, col in (metrics or METRICS).items()},
        frozenset(progress.columns),
    )
    return curve, config


def recipe_of(config: dict) -> dict:
    """The config without the keys that do not change the recipe (and without the metadata); keys that moved are
    taken under their new names, so a run of an older lrun joins its recipe's group."""
    from lrun.config import upgrade_keys

    recipe, _ = upgrade_keys({k: v for k, v in config.items() if k != "metadata"})
    for section, keys in NEUTRAL.items():
        recipe[section] = {k: v for k, v in recipe.get(section, {}).items() if k not in keys}
    return recipe


def expand(paths: list[str | Path]) -> list[Path]:
    """Run directories: each path itself, or the run directories right below it (a job array's parent)."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if progress_path(path).is_file():
            runs.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if progress_path(p).is_file())
            if not found:
                raise CompareError(f"{path}: no run directories in it (none holds a progress.csv)")
            runs += found
        else:
            raise CompareError(f"{path}: no such run directory")
    return runs


def run_label(run_dir: Path, seed: int) -> str:
    """A run's name without its seed: walk-seed2 -> walk; a directory named only by its seed (`lrun bench learn`'s
    OUT/seed-2) takes its parent's name."""
    name = run_dir.name
    for suffix in (f"-seed{seed}", f"-seed-{seed}", f"_seed{seed}", f"seed-{seed}", f"seed{seed}"):
        if name.endswith(suffix):
            return name.removesuffix(suffix) or run_dir.resolve().parent.name or name
    return name


def group_runs(paths: list[str | Path], metrics: dict[str, str] | None = None) -> list[Group]:
    """Read every run and group them by recipe; a group is labelled by its first run's name (`run_label`).
    CompareError if no run logged one of `metrics` (a misspelt column, most likely)."""
    groups: list[Group] = []
    logged: set[str] = set()
    for run_dir in expand(paths):
        curve, config = read_curve(run_dir, metrics)
        logged |= curve.logged
        recipe = recipe_of(config)
        for group in groups:
            if group.recipe == recipe:
                group.curves.append(curve)
                break
        else:
            groups.append(Group(run_label(run_dir, curve.seed), recipe, [curve]))
    # only the columns asked for beyond METRICS: a run of an older lrun may lack a built-in one (its panel stays empty)
    built_in = set(METRICS.values())
    missing = [column for column in (metrics or METRICS).values() if column not in built_in and column not in logged]
    if missing:
        raise CompareError(
            f"no run logged {', '.join(missing)}; the logged columns: {', '.join(sorted(logged - {'iteration'}))}"
        )
    labels = [g.label for g in groups]
    for g in groups:  # two recipes with one name: tell them apart
        if labels.count(g.label) > 1:
            g.label = f"{g.label} ({g.curves[0].run_dir})"
    return groups


def interquartile_mean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean of the middle half of the finite values along `axis` (a quarter, rounded down, trimmed from each
    end: with fewer than 4 values that is the plain mean); NaN (a run without the value there) is left out, and
    a slice with no finite value gives NaN."""
    ordered = np.sort(np.moveaxis(np.asarray(values, dtype=float), axis, 0), axis=0)  # NaN sorts last
    finite = np.isfinite(ordered).sum(axis=0)
    cut = finite // 4
    rank = np.arange(ordered.shape[0]).reshape(-1, *([1] * (ordered.ndim - 1)))
    kept = (rank >= cut) & (rank < finite - cut)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(kept, ordered, 0.0).sum(axis=0) / kept.sum(axis=0)


def bootstrap_ci(
    values: np.ndarray, samples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the IQM over runs (axis 0 of values: runs x points), resampling runs."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    picks = rng.integers(0, n, size=(samples, n))
    stats = np.stack([interquartile_mean(values[p], axis=0) for p in picks])
    tail = (1.0 - level) / 2.0
    return np.nanquantile(stats, tail, axis=0), np.nanquantile(stats, 1.0 - tail, axis=0)


@dataclass
class Aggregate:
    """A group's metric curves on a common env-step grid: IQM and CI per point."""

    label: str
    runs: int
    grid: np.ndarray
    iqm: dict[str, np.ndarray]
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]


def aggregate(group: Group, points: int = 50, window: int = 5) -> Aggregate:
    """Each run smoothed and interpolated onto a grid up to the shortest run's last env step, then the IQM and
    bootstrap CI over runs at each point."""
    end = min(float(c.env_steps[-1]) for c in group.curves)
    start = max(float(c.env_steps[0]) for c in group.curves)
    grid = np.linspace(start, end, points) if end > start else np.array([end])
    iqm, low, high = {}, {}, {}
    for metric in group.curves[0].metrics:
        table = []
        for c in group.curves:
            y = smooth(c.metrics[metric], window)
            ok = np.isfinite(y)
            row = np.full(len(grid), np.nan)
            if ok.any():  # no extrapolation: outside the steps a run logged the metric at, it has no value
                x = c.env_steps[ok]
                inside = (grid >= x.min()) & (grid <= x.max())
                row[inside] = np.interp(grid[inside], x, y[ok])
            table.append(row)
        values = np.array(table)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # points where no run has the metric stay NaN
            iqm[metric] = interquartile_mean(values)
            low[metric], high[metric] = bootstrap_ci(values) if len(values) > 1 else (iqm[metric], iqm[metric])
    return Aggregate(group.label, len(group.curves), grid, iqm, low, high)


def format_table(aggregates: list[Aggregate]) -> str:
    """The last grid point of every group: IQM [95 % CI] per metric."""
    metrics = list(aggregates[0].iqm)
    heads = [f"{m} IQM [95% CI]" for m in metrics]
    widths = [max(28, len(h)) for h in heads]  # a long column name widens its column, not the others
    lines = [
        f"{'group':32s} {'runs':>4s} {'env steps':>10s}  " + "  ".join(f"{h:>{w}s}" for h, w in zip(heads, widths)),
    ]
    for a in aggregates:
        # 4 significant digits: a temperature of 0.004 and a Q of 170 both stay readable
        cells = [f"{a.iqm[m][-1]:8.4g} [{a.low[m][-1]:7.4g}, {a.high[m][-1]:7.4g}]" for m in metrics]
        row = "  ".join(f"{c:>{w}s}" for c, w in zip(cells, widths))
        lines.append(f"{a.label[:32]:32s} {a.runs:4d} {a.grid[-1]:10.0f}  " + row)
    return "\n".join(lines)


def write_csv(aggregates: list[Aggregate], path: Path) -> None:
    """Every group, point and metric: env_steps, IQM, CI bounds, runs."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "runs", "metric", "env_steps", "iqm", "ci_low", "ci_high"])
        for a in aggregates:
            for m in a.iqm:
                for x, y, lo, hi in zip(a.grid, a.iqm[m], a.low[m], a.high[m], strict=True):
                    writer.writerow([a.label, a.runs, m, f"{x:.0f}", f"{y:.6g}", f"{lo:.6g}", f"{hi:.6g}"])


def steps_label(x: float, _position: object = None) -> str:
    """An env-step count for an axis: 2.5 M, 300 k or 1600."""
    if abs(x) >= 1e6:
        return f"{x / 1e6:.3g} M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.3g} k"
    return f"{x:.0f}"


def plot(aggregates: list[Aggregate], path: Path) -> Path:
    """One panel per metric: IQM lines with their 95 % CI bands, against simulated env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    titles = {"task_return": "task return (m)", "distance": "distance (m)", "fall_rate": "fall rate"}
    metrics = list(aggregates[0].iqm)
    columns = min(len(metrics), 3)  # three panels a row: more would shrink each past reading
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        for a in aggregates:
            line = ax.plot(a.grid, a.iqm[metric], label=f"{a.label} ({a.runs} run{'s' if a.runs > 1 else ''})")[0]
            ax.fill_between(a.grid, a.low[metric], a.high[metric], color=line.get_color(), alpha=0.2)
        ax.set_title(titles.get(metric, metric))
        ax.set_xlabel("simulated env steps (0.01 s each)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))  # labels that never run into each other
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(steps_label))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("IQM over seeds, 95 % bootstrap CI (training episodes)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(paths: list[str | Path], out: str | Path, extra_metrics: list[str] | None = None) -> tuple[list, str]:
    """Group, aggregate, and write compare.csv, compare.txt and compare.png into `out`; returns the table.
    `extra_metrics`: progress.csv columns to show beside `METRICS`. Evaluation directories (`lrun eval` outputs)
    are compared episode by episode instead (`lrun.analysis.paired`)."""
    evaluations = [is_evaluation(p) for p in paths]
    if all(evaluations):
        if extra_metrics:
            raise CompareError("--metric picks progress.csv columns of training runs; evaluations have none")
        return compare_evaluations(paths, out)
    if any(evaluations):
        first = next(p for p, e in zip(paths, evaluations) if e)
        why = [why_not_an_evaluation(Path(p)) for p, e in zip(paths, evaluations) if not e]
        raise CompareError(f"{first} is an evaluation (compared episode by episode) but {'; '.join(why)}")
    aggregates = [aggregate(g) for g in group_runs(paths, metric_columns(extra_metrics))]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = format_table(aggregates)
    (out / "compare.txt").write_text(text + "\n")
    write_csv(aggregates, out / "compare.csv")
    plot(aggregates, out / "compare.png")
    return aggregates, text
