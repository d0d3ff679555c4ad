"""`lrun bench learn`: how far a config walks after a budget of simulated env steps, over seeds.

For each seed s, OUT/seed-s is trained by `mpiexec -n R lrun train CONFIG --set run.seed=s ...` for as many
iterations as reach the budget of simulated env steps (0.01 s each), then its final checkpoint is scored twice
by `lrun eval` at difficulty 0 on the graders' physics (graders-2017): one deterministic episode (at difficulty 0
nothing in the episode is drawn at random, so a deterministic policy's episodes are all alike: measured, 20 of
them with a spread of 0.0 m) and `--eval-episodes` sampled ones (`--stochastic`, default 100), which give the
fall rate. Over several seeds, the interquartile mean of the seeds' distances and its 95 % bootstrap interval
(resampling seeds, as `lrun compare` does) summarise the recipe (below 4 seeds the IQM trims nothing: it is the
mean, and the interval spans about the seeds' range). OUT/learn.json, OUT/learn.txt (a table) and
OUT/learn.png (distance against simulated env steps, one line per seed) hold the results.

A seed whose run already reached the budget is not retrained, one with an earlier checkpoint is continued
(`--resume`), and an evaluation already made of the final checkpoint with the same settings is kept: an
interrupted benchmark continues where it stopped when run again. A seed directory whose run was trained with
another config is refused rather than mixed in.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from lrun.config import TrainConfig, load_config
from lrun.env.physics import GRADERS_PHYSICS
from lrun.launcher import find_mpiexec, lrun_command
from lrun.progress import load_progress, smooth

DEFAULT_CONFIG = "experiments/recipes/walk-sac.toml"
#: Keys the benchmark sets itself (per seed); a --set of one of them would break the budget or the layout.
OWN_KEYS = ("run.seed", "run.run_dir", "run.iterations")
#: Run keys that do not change what is learnt: a seed run may differ from the config in these and still count.
NEUTRAL_RUN_KEYS = (
    "iterations",
    "run_dir",
    "checkpoint_every",
    "sync_check_every",
    "wait_sleep",
    "progress",
    "tensorboard",
)
#: The evaluations of every seed's final checkpoint, in the order they run (see `eval_settings`).
EVAL_KINDS = ("deterministic", "sampled")


class BenchError(RuntimeError):
    """A problem with the benchmark's input or output directory, found before or between runs (exit 2)."""


class CommandFailed(RuntimeError):
    """A training or evaluation subprocess exited non-zero."""

    def __init__(self, command: list[str], code: int, hint: str = "") -> None:
        self.command, self.code = command, code
        super().__init__(f"{' '.join(command)} exited with code {code}{hint}")


@dataclass
class LearnPlan:
    """What `lrun bench learn` runs: the config, the budget in iterations, the ranks and the seeds."""

    config_path: str
    overrides: list[str]
    env_steps: int
    ranks: int
    seeds: int
    eval_episodes: int
    out: Path
    config: TrainConfig
    simulators: int
    steps_per_iteration: int
    iterations: int
    mpiexec: str = ""
    lrun: str = ""

    def seed_dir(self, seed: int) -> Path:
        """OUT/seed-s: the run directory of seed s."""
        return self.out / f"seed-{seed}"

    def seed_overrides(self, seed: int, iterations: int | None = None) -> list[str]:
        """The benchmark's own overrides of seed s's run (before the user's)."""
        iterations = iterations or self.iterations
        return [f"run.seed={seed}", f"run.run_dir={self.seed_dir(seed)}", f"run.iterations={iterations}"]


def simulated_steps_per_iteration(config: TrainConfig, ranks: int) -> tuple[int, int]:
    """(simulator ranks, simulated env steps per iteration) of `config` on `ranks` MPI ranks (1: serial)."""
    simulators = 1 if ranks == 1 else ranks - config.layout.learners
    steps = simulators * config.layout.envs_per_rank * config.layout.steps_per_env * config.env.frame_skip
    return simulators, steps


def iterations_for(env_steps: int, steps_per_iteration: int) -> int:
    """The fewest iterations that reach `env_steps` simulated env steps."""
    return max(1, -(-env_steps // steps_per_iteration))


def default_out(config_path: str) -> Path:
    """bench-results/learn-<config stem>."""
    return Path("bench-results") / f"learn-{Path(config_path).stem}"


def find_commands() -> tuple[str, str]:
    """(mpiexec, lrun) next to this Python, else on PATH."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise BenchError("mpiexec not found (pip install mpich)")
    return mpiexec, lrun_command()


def make_plan(
    config_path: str | None,
    env_steps: int,
    ranks: int,
    seeds: int,
    eval_episodes: int,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> LearnPlan:
    """Check the arguments, load the config and work out the iterations; BenchError or ConfigError if wrong."""
    from lrun.mpi import LayoutError, check_layout

    config_path = config_path or DEFAULT_CONFIG
    overrides = list(overrides or [])
    for name, value in (("--env-steps", env_steps), ("--ranks", ranks), ("--seeds", seeds)):
        if value < 1:
            raise BenchError(f"{name} must be >= 1")
    if eval_episodes < 1:
        raise BenchError("--eval-episodes must be >= 1")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in OWN_KEYS:
            raise BenchError(f"--set {key}: the benchmark sets it (--seeds, --out, --env-steps)")
    out_dir = Path(out) if out else default_out(config_path)
    if (out_dir / "learn.json").exists() and not overwrite:
        raise BenchError(f"{out_dir} already holds a benchmark (learn.json): choose another --out or pass --overwrite")
    config = load_config(config_path, overrides)
    if ranks > 1:
        try:
            check_layout(ranks, config.layout.learners, config.layout.envs_per_rank, config.layout.ranks, environ={})
        except LayoutError as exc:
            raise BenchError(f"--ranks {ranks}: {exc}") from None
    simulators, per_iteration = simulated_steps_per_iteration(config, ranks)
    return LearnPlan(
        config_path,
        overrides,
        env_steps,
        ranks,
        seeds,
        eval_episodes,
        out_dir,
        config,
        simulators,
        per_iteration,
        iterations_for(env_steps, per_iteration),
    )


def _differences(
    theirs: dict[str, Any], ours: dict[str, Any], prefix: str = "", defaults: dict[str, Any] | None = None
) -> list[str]:
    """Keys whose values differ between two resolved configs (nested dicts), as section.key. A key the stored
    config lacks (lrun added it since) counts as equal where ours holds its default: a run of older code is not
    "another config" for a key it never had."""
    defaults = TrainConfig().to_dict() if defaults is None else defaults
    found = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key), ours.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict) and prefix == "":
            found += _differences(a, b, f"{key}.", defaults.get(key, {}))
        elif key not in theirs and key in defaults and b == defaults[key]:
            continue
        elif a != b and not (prefix == "run." and key in NEUTRAL_RUN_KEYS):
            found.append(name)
    return found


def seed_status(plan: LearnPlan, seed: int) -> tuple[str, int, int]:
    """('new' | 'resume' | 'done', iterations done, iterations to train to) of seed s's run directory.

    A run is done when it has reached the budget of simulated steps. An episode that ends inside a frame skip
    takes fewer simulated steps than its decisions stand for, so a run can fall short of the budget after the
    planned iterations: it is then continued for as many more as the shortfall needs. BenchError if the
    directory holds a run of another config or one that went past this budget.
    """
    from lrun.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
    from lrun.config import upgrade_keys

    run_dir = plan.seed_dir(seed)
    latest = latest_checkpoint(run_dir)
    if not latest.is_file():
        return "new", 0, plan.iterations
    try:
        payload = load_checkpoint(latest)
    except CheckpointError as exc:
        raise BenchError(f"{exc}: remove {run_dir} to train seed {seed} afresh") from None
    expected = load_config(plan.config_path, [*plan.seed_overrides(seed), *plan.overrides]).to_dict()
    # a run of an older lrun holds keys that moved under their old names: compare them under the new ones
    differ = _differences(upgrade_keys(payload["config"])[0], expected)
    if differ:
        raise BenchError(
            f"{run_dir} holds a run of another config (differs in {', '.join(differ)}): choose another --out"
        )
    done, steps = int(payload["iteration"]), int(payload["env_steps"])
    if steps < plan.env_steps:
        return (
            "resume",
            done,
            max(plan.iterations, done + iterations_for(plan.env_steps - steps, plan.steps_per_iteration)),
        )
    if done > plan.iterations and steps - plan.steps_per_iteration >= plan.env_steps:
        raise BenchError(
            f"{run_dir} holds a run of {done} iterations ({steps} env steps), past this budget of {plan.iterations} "
            f"iterations ({plan.env_steps} env steps): choose another --out"
        )
    return "done", done, done


def run_command(command: list[str], stream: TextIO) -> None:
    """Run a subprocess, copying its output lines to `stream` as they come; CommandFailed if it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}
    print(f"running: {' '.join(command)}", file=stream, flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            stream.write(line)
            stream.flush()
        code = process.wait()
    except KeyboardInterrupt:  # the terminal's SIGINT reached the ranks too: lrun train writes a checkpoint
        code = process.wait()
        raise CommandFailed(command, code, " (interrupted: run the benchmark again to continue)") from None
    if code == 3:
        raise CommandFailed(command, code, " (stopped by a signal after a checkpoint: run again to continue)")
    if code:
        raise CommandFailed(command, code)


def train_seed(plan: LearnPlan, seed: int, stream: TextIO, max_rounds: int = 5) -> int:
    """Train (or continue) seed s's run until it reaches the budget; returns its final iteration."""
    run_dir = plan.seed_dir(seed)
    for round_ in range(max_rounds):
        status, done, target = seed_status(plan, seed)
        if status == "done":
            if round_ == 0:
                print(
                    f"== seed {seed}: {run_dir} already reached the budget ({done} iterations): kept",
                    file=stream,
                    flush=True,
                )
            return done
        command = [plan.mpiexec, "-n", str(plan.ranks), plan.lrun, "train", plan.config_path]
        for item in [*plan.seed_overrides(seed, target), *plan.overrides]:
            command += ["--set", item]
        if status == "resume":
            command += ["--resume", str(run_dir)]
            what = f"continuing from iteration {done} to {target}"
        else:
            if run_dir.exists():  # a start interrupted before its first checkpoint: nothing worth keeping
                shutil.rmtree(run_dir)
            what = f"training {target} iterations"
        print(f"== seed {seed}: {what} in {run_dir}", file=stream, flush=True)
        run_command(command, stream)
    raise BenchError(f"{run_dir}: still short of {plan.env_steps} env steps after {max_rounds} rounds of training")


def eval_settings(plan: LearnPlan, kind: str) -> dict[str, Any]:
    """The `lrun eval` settings of one kind of evaluation (one of `EVAL_KINDS`): both at difficulty 0 on the
    graders' physics; 'deterministic' runs one episode (they would all be alike), 'sampled' --eval-episodes."""
    deterministic = kind == "deterministic"
    return {
        "episodes": 1 if deterministic else plan.eval_episodes,
        "difficulty": 0,
        "physics": GRADERS_PHYSICS,
        "deterministic": deterministic,
    }


def evaluate_seed(plan: LearnPlan, seed: int, iteration: int, kind: str, stream: TextIO) -> dict[str, Any]:
    """Seed s's final checkpoint scored by `lrun eval` (kept if already made); returns eval.json's contents."""
    run_dir = plan.seed_dir(seed)
    out = run_dir / f"eval-{kind}"
    wanted = eval_settings(plan, kind)
    previous = out / "eval.json"
    if previous.is_file():
        result = json.loads(previous.read_text())
        settings = result.get("settings", {})
        same = all(settings.get(k) == v for k, v in wanted.items()) and settings.get("seed") == 0
        if same and result.get("iteration") == iteration:
            print(f"== seed {seed}: {previous} already scores the final checkpoint: kept", file=stream, flush=True)
            return result
    command = [plan.mpiexec, "-n", str(plan.ranks), plan.lrun, "eval", str(run_dir)]
    command += ["--difficulty", str(wanted["difficulty"]), "--physics", wanted["physics"]]
    command += ["--episodes", str(wanted["episodes"]), "--out", str(out), "--overwrite"]
    if not wanted["deterministic"]:
        command.append("--stochastic")
    print(f"== seed {seed}: evaluating ({kind})", file=stream, flush=True)
    run_command(command, stream)
    return json.loads(previous.read_text())


def learning_curve(run_dir: Path, rows: list[dict[str, float]]) -> dict[str, Any]:
    """Per-iteration training curve against simulated env steps: the mean distance of the episodes that ended
    in each iteration (from the trajectory store), else the logged `charts/episodic_task_return`."""
    steps_at = {int(r["iteration"]): r["env_steps"] for r in rows}
    try:
        from lrun.store.reader import RunStore, StoreError

        with RunStore(run_dir) as store:
            episodes = store.episodes(["distance", "policy_version"])
    except (ImportError, OSError, KeyError, StoreError):
        episodes = None
    if episodes is not None and len(episodes["distance"]) and np.isfinite(episodes["distance"]).any():
        versions = episodes["policy_version"].astype(int)
        xs, ys = [], []
        for v in np.unique(versions):
            if v + 1 in steps_at:  # episodes collected by policy version v ended in iteration v + 1
                xs.append(steps_at[v + 1])
                ys.append(float(np.nanmean(episodes["distance"][versions == v])))
        return {"metric": "distance", "label": "distance at episode end (m)", "env_steps": xs, "value": ys}
    xs = [r["env_steps"] for r in rows]
    ys = [r.get("charts/episodic_task_return", math.nan) for r in rows]
    return {"metric": "task_return", "label": "episodic task return (~ distance, m)", "env_steps": xs, "value": ys}


def seed_figures(plan: LearnPlan, seed: int) -> dict[str, Any]:
    """Simulated env steps reached, training time (sum of the iterations' times, resumes included) and rate."""
    run_dir = plan.seed_dir(seed)
    rows = load_progress(run_dir).rows()
    reached = int(rows[-1]["env_steps"]) if rows else 0
    wall = float(sum(r.get("time/iteration_s", math.nan) for r in rows))
    curve = learning_curve(run_dir, rows)
    tail = [v for v in curve["value"][-max(1, len(curve["value"]) // 10) :] if np.isfinite(v)]
    return {
        "seed": seed,
        "run_dir": str(run_dir),
        "iterations": int(rows[-1]["iteration"]) if rows else 0,
        "env_steps": reached,
        "wall_s": wall,
        "steps_per_s": reached / wall if wall > 0 else math.nan,
        "final_training_" + curve["metric"]: float(np.mean(tail)) if tail else math.nan,
        "curve": curve,
    }


def mean_summary(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Seeds' eval summaries combined: numbers averaged; falls and episodes summed, the fall rate and its 95 %
    Wilson interval pooled over every seed's episodes; the interquartile mean of the seeds' mean distances with
    its 95 % bootstrap interval over seeds (`distance_iqm_m`, `distance_iqm_ci95`)."""
    from lrun.analysis.common import wilson_interval
    from lrun.analysis.compare import bootstrap_ci, interquartile_mean

    out: dict[str, Any] = {}
    for key, value in summaries[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(np.mean([s[key] for s in summaries]))
    episodes = int(sum(s["episodes"] for s in summaries))
    falls = int(sum(s["falls"] for s in summaries))
    out.update(episodes=episodes, falls=falls, fall_rate=falls / episodes)
    out["integrator_failures"] = int(sum(s.get("integrator_failures", 0) for s in summaries))
    out["fall_rate_ci95"] = list(wilson_interval(falls, episodes))
    distances = np.array([[s["mean_distance_m"]] for s in summaries], dtype=float)  # seeds x 1
    low, high = bootstrap_ci(distances)
    out["distance_iqm_m"] = float(interquartile_mean(distances)[0])
    out["distance_iqm_ci95"] = [float(low[0]), float(high[0])]
    return out


def _falls(summary: dict[str, Any]) -> str:
    low, high = summary["fall_rate_ci95"]
    return f"{100 * summary['fall_rate']:5.1f} [{100 * low:.0f}-{100 * high:.0f}]"


def format_table(result: dict[str, Any]) -> str:
    """The per-seed results, their mean and interquartile mean as a fixed-width table."""
    ev = result["evaluations"]
    det, sam = ev["deterministic"], ev["sampled"]
    left = f"deterministic, {det['episodes']} ep"
    right = f"sampled, {sam['episodes']} ep"
    lines = [
        f"lrun bench learn: {result['config']} {' '.join('--set ' + o for o in result['overrides'])}".rstrip(),
        f"budget {result['env_steps_budget']} simulated env steps = {result['iterations']} iterations x "
        f"{result['steps_per_iteration']} ({result['simulators']} simulator"
        f"{'s' if result['simulators'] > 1 else ''}, {result['ranks']} rank{'s' if result['ranks'] > 1 else ''}); "
        f"lrun eval at difficulty {sam['difficulty']}, {sam['physics']} physics; distances in m, falls in % "
        "[95 % CI]",
        f"{'':32} | {left:19} | {right}",
        f"{'seed':>4} {'env steps':>10} {'wall s':>8} {'steps/s':>7} | {'distance':>8} {'falls %':>10} | "
        f"{'mean':>6} {'median':>6} {'falls %':>19}",
    ]

    def row(name: str, r: dict[str, Any]) -> str:
        d, s = r["eval_deterministic"], r["eval_sampled"]
        return (
            f"{name:>4} {r['env_steps']:>10.0f} {r['wall_s']:>8.0f} {r['steps_per_s']:>7.1f} | "
            f"{d['mean_distance_m']:8.2f} {100 * d['fall_rate']:10.0f} | "
            f"{s['mean_distance_m']:6.2f} {s['median_distance_m']:6.2f} {_falls(s):>19}"
        )

    lines += [row(str(r["seed"]), r) for r in result["seeds"]]
    if len(result["seeds"]) > 1:
        mean = result["mean"]
        lines.append(row("mean", mean))
        iqm = [
            f"{mean['eval_' + k]['distance_iqm_m']:.2f} m [{mean['eval_' + k]['distance_iqm_ci95'][0]:.2f}-"
            f"{mean['eval_' + k]['distance_iqm_ci95'][1]:.2f}]"
            for k in EVAL_KINDS
        ]
        seeds = len(result["seeds"])
        lines.append(
            f"interquartile mean over {seeds} seeds [95 % bootstrap CI]: deterministic {iqm[0]}, sampled {iqm[1]}"
        )
        if seeds < 4:  # said, so that the two rows are not read as two estimates
            lines.append("(below 4 seeds nothing is trimmed: the IQM is the mean, the interval about the seeds' range)")
    return "\n".join(lines)


def plot_curves(result: dict[str, Any], path: Path) -> Path:
    """Training distance (or task return) against simulated env steps, one line per seed, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrun.analysis.common import save_figure

    fig, ax = plt.subplots(figsize=(8, 4.5))
    label = "value"
    for r in result["seeds"]:
        curve = r["curve"]
        label = curve["label"]
        x, y = np.asarray(curve["env_steps"], float), np.asarray(curve["value"], float)
        window = max(1, len(y) // 25)
        marker = "o" if len(x) < 30 else None  # a short run's few points stay visible
        (line,) = ax.plot(x, smooth(y, window), marker=marker, label=f"seed {r['seed']}")
        if window > 1:
            ax.plot(x, y, color=line.get_color(), alpha=0.25, linewidth=0.7)
    ax.set(
        xlabel="simulated env steps (0.01 s each)",
        ylabel=label,
        title=f"{Path(result['config']).name}: training, {result['env_steps_budget']} env steps",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=110)


def run_bench_learn(plan: LearnPlan, stream: TextIO | None = None) -> dict[str, Any]:
    """Train and evaluate every seed of `plan`, write OUT/learn.{json,txt,png}; returns learn.json's contents.

    Raises BenchError (bad input or directory) or CommandFailed (a subprocess failed)."""
    stream = stream or sys.stderr
    if not plan.mpiexec:
        plan.mpiexec, plan.lrun = find_commands()
    plan.out.mkdir(parents=True, exist_ok=True)
    for seed in range(plan.seeds):  # refuse a foreign seed directory before spending hours on the others
        seed_status(plan, seed)
    seeds = []
    for seed in range(plan.seeds):
        final = train_seed(plan, seed, stream)
        figures = seed_figures(plan, seed)
        for kind in EVAL_KINDS:
            figures[f"eval_{kind}"] = evaluate_seed(plan, seed, final, kind, stream)["summary"]
        seeds.append(figures)
    numbers = ("env_steps", "wall_s", "steps_per_s")
    mean: dict[str, Any] = {k: float(np.mean([s[k] for s in seeds])) for k in numbers}
    for kind in EVAL_KINDS:
        mean[f"eval_{kind}"] = mean_summary([s[f"eval_{kind}"] for s in seeds])
    result = {
        "config": plan.config_path,
        "overrides": plan.overrides,
        "env_steps_budget": plan.env_steps,
        "iterations": plan.iterations,
        "steps_per_iteration": plan.steps_per_iteration,
        "ranks": plan.ranks,
        "simulators": plan.simulators,
        "evaluations": {kind: eval_settings(plan, kind) for kind in EVAL_KINDS},
        "seeds": seeds,
        "mean": mean,
    }
    plot_curves(result, plan.out / "learn.png")
    stored = {**result, "seeds": [{k: v for k, v in s.items() if k != "curve"} for s in seeds]}
    (plan.out / "learn.txt").write_text(format_table(stored) + "\n")
    (plan.out / "learn.json").write_text(json.dumps(stored, indent=1) + "\n")
    return stored


def output_files(out: Path) -> list[Path]:
    """The files a finished benchmark leaves in OUT."""
    return [out / "learn.json", out / "learn.txt", out / "learn.png"]
