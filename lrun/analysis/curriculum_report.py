"""The curriculum's table and picture: every stage's network, budget, training and evaluations in one place.

`lrun curriculum` writes ROOT/curriculum.md (a markdown table), ROOT/curriculum.json (the same rows as data) and
ROOT/curriculum.png (the stages' training curves end to end against the simulated env steps of the whole chain,
each stage's evaluations marked where it ended). The facts of each stage (`StageFacts`) are plain data that
`lrun.curriculum` reads from the checkpoints; this module reads only run directories' progress.csv,
evaluations' eval.json and, for an unfinished evaluation, its plan and rank files (read only), so it needs
neither MPI nor OpenSim.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lrun.analysis.common import planned_episodes, save_figure
from lrun.analysis.report import windowed_mean
from lrun.progress import load_progress, progress_path

#: The evaluation every stage gets besides its own task's: the 2017 round 2 (`lrun eval --setting round2`).
ROUND2 = "round2"
#: The share of a stage's last iterations whose training episodes the table summarises.
LAST_SHARE = 0.1


@dataclass
class StageFacts:
    """What the table and picture need of one stage (from its checkpoint, its config and its evaluations)."""

    name: str
    parent: str | None
    transfer: str  # init | blend | clone, or "-" for a stage without a parent
    provided: bool  # trained elsewhere (a `checkpoint =` stage or `--from`): no run directory here
    algorithm: str
    actor: list[int]
    critics: list[int] | None  # SAC's critics; None for PPO
    task: str  # the stage's own evaluation label: a named setting (flat, round2) or dD-oK
    iterations: int  # done
    planned: int | None  # the stage's budget in iterations (None for a provided stage)
    env_steps: int  # simulated env steps of this stage alone (0.01 s each)
    run_dir: Path | None = None
    evals: dict[str, Path] = field(default_factory=dict)  # label (task or round2) -> evaluation directory


def cumulative_steps(stages: list[StageFacts]) -> dict[str, tuple[int, int]]:
    """Each stage's (first, last) env step counted along its line of parents: a stage starts where its parent
    ended, so a branch is not charged for its siblings' steps."""
    spans: dict[str, tuple[int, int]] = {}
    for stage in stages:
        start = spans[stage.parent][1] if stage.parent in spans else 0
        spans[stage.name] = (start, start + stage.env_steps)
    return spans


def training_window(run_dir: Path | None, share: float = LAST_SHARE) -> dict[str, float] | None:
    """Mean distance and fall rate of the training episodes in the last `share` of a run's logged iterations
    (weighted by episodes), or None without a progress.csv holding episodes."""
    if run_dir is None or not progress_path(run_dir).is_file():
        return None
    progress = load_progress(run_dir)
    if not len(progress):
        return None
    count = max(1, math.ceil(len(progress) * share))
    episodes = np.nan_to_num(progress.get("charts/episodes")[-count:])
    if episodes.sum() <= 0:
        return None
    out = {"iterations": count, "episodes": int(episodes.sum()), "env_steps": float(progress["env_steps"][-1])}
    for key, column in (("distance_m", "charts/distance"), ("fall_rate", "charts/fall_rate")):
        out[key] = float(windowed_mean(progress.get(column)[-count:], episodes, count)[-1])
    return out


def read_evaluation(directory: Path) -> dict[str, Any] | None:
    """An evaluation's eval.json (checkpoint, iteration, settings, summary), or None if it has not finished."""
    try:
        return json.loads((directory / "eval.json").read_text())
    except (OSError, ValueError):
        return None


def read_partial(directory: Path) -> tuple[int, int] | None:
    """(finished, planned) episodes of an evaluation that has not finished (its eval-plan.json and rank files,
    read only: one being run or stopped), or None where there is none."""
    from lrun.store.reader import StoreError, rank_files
    from lrun.store.writer import finished_extent

    planned = planned_episodes(directory)
    if planned is None:
        return None
    try:
        finished = sum(finished_extent(path)[1] for path in rank_files(directory))
    except (OSError, ValueError, KeyError, TypeError, StoreError):
        return None
    return finished, planned


def build_rows(stages: list[StageFacts]) -> list[dict[str, Any]]:
    """One row per stage: network, budget, env steps (the stage's and the chain's), training's last episodes and
    the evaluations at its own task and at round 2."""
    spans = cumulative_steps(stages)
    rows = []
    for stage in stages:
        evals = {label: read_evaluation(path) for label, path in stage.evals.items()}
        rows.append(
            {
                "stage": stage.name,
                "parent": stage.parent,
                "transfer": stage.transfer,
                "provided": stage.provided,
                "algorithm": stage.algorithm,
                "actor": stage.actor,
                "critics": stage.critics,
                "task": stage.task,
                "iterations": stage.iterations,
                "planned": stage.planned,
                "complete": stage.provided or (stage.planned is not None and stage.iterations >= stage.planned),
                "env_steps": stage.env_steps,
                "env_steps_in_all": spans[stage.name][1],
                "training": training_window(stage.run_dir),
                "evaluations": {label: e for label, e in evals.items() if e is not None},
                # evaluations started and not finished (stopped, or running now): [episodes finished, planned]
                "partial": {
                    label: list(part)
                    for label, path in stage.evals.items()
                    if evals[label] is None and (part := read_partial(path)) is not None
                },
                # an evaluation of an earlier checkpoint (the stage trained on since, without --eval)
                "stale": sorted(
                    name for name, e in evals.items() if e is not None and e.get("iteration") != stage.iterations
                ),
                "evaluation_dirs": {label: str(path) for label, path in stage.evals.items()},
            }
        )
    return rows


def _layers(sizes: list[int]) -> str:
    return f"{len(sizes)}x{sizes[0]}" if sizes and len(set(sizes)) == 1 else "-".join(str(n) for n in sizes)


def _network(row: dict[str, Any]) -> str:
    return f"{_layers(row['actor'])}; {_layers(row['critics'])}" if row["critics"] else _layers(row["actor"])


def _millions(steps: float) -> str:
    return f"{steps / 1e6:.2f} M" if steps >= 100_000 else f"{int(steps):,}"  # tiny stages: the count itself


def format_evaluation(evaluation: dict[str, Any] | None, stale: bool = False, partial: list[int] | None = None) -> str:
    """'mean 9.76 m (median 11.86), falls 16.4 % (82/500, CI 13.4-19.9 %), 1.05 m/s', 'part way (k of N
    episodes)' for an unfinished one, or '-'; a stale one (of an earlier checkpoint) says which iteration it scored."""
    if not evaluation:
        return f"part way ({partial[0]} of {partial[1]} episodes)" if partial else "-"
    s = evaluation["summary"]
    low, high = s["fall_rate_ci95"]
    text = (
        f"mean {s['mean_distance_m']:.2f} m (median {s['median_distance_m']:.2f}), falls "
        f"{100 * s['fall_rate']:.1f} % ({s['falls']}/{s['episodes']}, CI {100 * low:.1f}-{100 * high:.1f} %), "
        f"{s['mean_speed_m_s']:.2f} m/s"
    )
    return f"{text} (STALE: iteration {evaluation.get('iteration')}'s policy)" if stale else text


def format_table(rows: list[dict[str, Any]], seed: int | None = None) -> str:
    """The rows as a markdown table (what the README's curriculum table holds)."""
    lines = [
        "| stage | algorithm | from (transfer) | network (actor; critics) | env steps (stage / in all) | training, "
        f"last {int(LAST_SHARE * 100)} % of iterations | eval at its own task | eval at round 2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        origin = (
            "trained elsewhere"
            if row["provided"]
            else (f"{row['parent']} ({row['transfer']})" if row["parent"] else "scratch")
        )
        budget = f"{_millions(row['env_steps'])} / {_millions(row['env_steps_in_all'])}"
        if not row["complete"]:
            budget += f" (iteration {row['iterations']} of {row['planned']}: unfinished)"
        train = row["training"]
        training = (
            f"{train['distance_m']:.2f} m, falls {100 * train['fall_rate']:.0f} % ({train['episodes']} episodes)"
            if train
            else "-"
        )
        evaluations, stale, partial = row["evaluations"], row["stale"], row["partial"]
        own = format_evaluation(evaluations.get(row["task"]), row["task"] in stale, partial.get(row["task"]))
        own = f"{row['task']}: {own}" if own != "-" else "-"
        if row["task"] == ROUND2:
            own = "= round 2" if ROUND2 in evaluations or ROUND2 in partial else "-"
        round2 = format_evaluation(evaluations.get(ROUND2), ROUND2 in stale, partial.get(ROUND2))
        lines.append(
            f"| {row['stage']} | {row['algorithm'].upper()} | {origin} | {_network(row)} | {budget} | {training} | "
            f"{own} | {round2} |"
        )
    if seed is not None and any(row["evaluations"] for row in rows):
        lines.append("")
        lines.append(
            f"Evaluations: `lrun eval` of each stage's final checkpoint, deterministic, the graders' physics, "
            f"episode seed {seed} (so stages meet the same episodes); training: sampled actions, the stage's training "
            "physics."
        )
    return "\n".join(lines)


def plot_curriculum(stages: list[StageFacts], rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Distance and fall rate of the training episodes of every stage, end to end along the chain's env steps,
    stage boundaries marked, and each stage's round-2 (and own-task) evaluation at the step it ended."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spans = cumulative_steps(stages)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (stage, row) in enumerate(zip(stages, rows)):
        colour = colours[k % len(colours)]
        start, end = spans[stage.name]
        for ax in axes:
            ax.axvline(end / 1e6, color="grey", lw=0.6, ls=":")
            ax.axvspan(start / 1e6, end / 1e6, color=colour, alpha=0.06)
        axes[0].text(
            (start + end) / 2e6,
            1.0,
            stage.name,
            transform=axes[0].get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color=colour,
        )
        if stage.run_dir is not None and progress_path(stage.run_dir).is_file():
            progress = load_progress(stage.run_dir)
            if len(progress):
                x = (start + progress["env_steps"]) / 1e6
                episodes = np.nan_to_num(progress.get("charts/episodes"))
                window = max(1, len(progress) // 20)
                for ax, column in zip(axes, ("charts/distance", "charts/fall_rate")):
                    values = progress.get(column)
                    ax.plot(x, values, color=colour, alpha=0.2, lw=0.8)
                    ax.plot(x, windowed_mean(values, episodes, window), color=colour, lw=1.8, label=stage.name)
        marks = [(ROUND2, "*")] + ([(row["task"], "o")] if row["task"] != ROUND2 else [])
        for label, marker in marks:
            evaluation = row["evaluations"].get(label)
            if not evaluation:
                continue
            s = evaluation["summary"]
            axes[0].plot(end / 1e6, s["mean_distance_m"], marker=marker, ms=10, color=colour, mec="black", ls="")
            low, high = s["fall_rate_ci95"]
            axes[1].errorbar(
                end / 1e6,
                s["fall_rate"],
                yerr=[[max(0.0, s["fall_rate"] - low)], [max(0.0, high - s["fall_rate"])]],
                marker=marker,
                ms=10,
                color=colour,
                mec="black",
                ls="",
                capsize=3,
            )
    axes[0].set_ylabel("distance (m)")
    axes[1].set_ylabel("fall rate")
    axes[1].set_ylim(-0.05, 1.05)
    for ax in axes:
        ax.set_xlabel("simulated env steps along the chain (millions)")
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "curriculum: training episodes (faint: per iteration; bold: trailing mean), evaluations at each stage's end "
        "(* round 2, o its own task)",
        fontsize=9,
    )
    return save_figure(fig, path, dpi=100)


def write_curriculum_report(stages: list[StageFacts], root: str | Path, seed: int | None = None) -> list[Path]:
    """ROOT/curriculum.md, .json and .png; returns their paths."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = build_rows(stages)
    table = format_table(rows, seed)
    # each file written beside its place and renamed over it: sibling stages' jobs (Slurm) may write at once
    pid = os.getpid()
    targets = [root / "curriculum.md", root / "curriculum.json", root / "curriculum.png"]
    temporary = [path.with_name(f".{path.stem}.tmp-{pid}{path.suffix}") for path in targets]
    temporary[0].write_text(table + "\n")
    temporary[1].write_text(json.dumps({"eval_seed": seed, "stages": rows}, indent=1) + "\n")
    plot_curriculum(stages, rows, temporary[2])
    for tmp, target in zip(temporary, targets):
        tmp.replace(target)
    return targets
