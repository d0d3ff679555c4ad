"""`lrun eval`: a trained policy on fixed seeds, spread over MPI ranks, scored the way the 2017 graders scored.

Episode k (0-based) is reset with seed `episode_seed(seed, k)` and run on rank k mod world size with the
deterministic policy (the distribution's mean) on the reference physics, so each episode's result depends only on
(checkpoint, settings, k): any rank count gives the same per-episode table. Each rank stores its episodes in
OUT/trajectories/rank-NNNN.h5 (the training store's schema, episode id = k), so `lrun report`, `replay` and
`render` work on an evaluation too. Rank 0 writes OUT/episodes.csv and OUT/eval.json and prints the summary; with
obstacles or weakened muscles, also where the episodes fell (lrun.analysis.falls: in eval.json's "falls" and
OUT/falls.png).

An evaluation stopped part way (a time limit, preemption, a killed rank) loses at most the episodes that were
running: each finished episode is flushed to its rank's file as it ends, and `--resume` (any rank count) keeps
those, runs the rest, and writes the same table an uninterrupted evaluation would have. OUT/eval-plan.json names
the checkpoint (with its SHA-256) and the settings, so a resume cannot mix two policies or two tasks; a resume
may raise --episodes, which extends the evaluation with the next episode seeds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from lrun import mpi as lmpi
from lrun.analysis.common import EVAL_PLAN_NAME, wilson_interval
from lrun.analysis.gait import format_knee_gait, knee_gait
from lrun.api import Agent, load_policy, resolve_model
from lrun.checkpoint import resolve_checkpoint
from lrun.config import ConfigError, EnvConfig
from lrun.env import ENV_ID
from lrun.env.factory import env_factory
from lrun.env.physics import STEP_SECONDS
from lrun.env.settings import ROUND2_2017, setting_name
from lrun.metadata import flat_attributes, run_metadata
from lrun.store.reader import RunStore, StoreError, rank_files, write_master
from lrun.store.recorder import EpisodeBook, env_facts, trajectory_attributes
from lrun.store.writer import TrajectoryWriter, keep_finished_episodes

#: Simulated seconds per env step (RunEnv).
#: Per-episode result columns, in the order of episodes.csv.
COLUMNS = ("episode", "seed", "distance", "task_return", "length", "sim_time_s", "fell", "integrator_failure")
FLOAT_COLUMNS = ("distance", "task_return", "sim_time_s")
#: EvalSettings fields a resume may change (where the results go, how many episodes, whether to resume).
RESUMABLE_CHANGES = ("episodes", "out", "overwrite", "resume")


@dataclass
class EvalSettings:
    """What `lrun eval` runs: the task variant, the episodes, the physics and where the results go."""

    episodes: int = 100
    difficulty: int = 2
    obstacles: int = 10
    seed: int = 0
    physics: str = "graders-2017"
    deterministic: bool = True
    out: str = ""
    overwrite: bool = False
    weakening: str = "graders-2017"
    resume: bool = False

    @property
    def setting(self) -> str:
        """The named task setting these values make (`lrun.env.settings`), or ""."""
        return setting_name(self.difficulty, self.obstacles, self.physics, self.weakening)


class EvalError(RuntimeError):
    """A problem found before any episode runs (same on every rank)."""


class EvaluationStopped(RuntimeError):
    """An evaluation stopped part way by its `stop` callback (every rank raises it together)."""


@contextmanager
def recorded_stop_signals() -> Iterator[Callable[[], bool]]:
    """While inside: the stop signals (Slurm's USR1 before a time limit, TERM, Ctrl-C's INT) are recorded on this
    rank instead of ending it; yields "has one arrived?" (evaluate's `stop`). A second Ctrl-C ends the process as
    a first one would have (KeyboardInterrupt). The earlier handlers come back on the way out."""
    from lrun.training.engine import StopRequest

    class Insistent(StopRequest):
        def _record(self, signum: int, frame: Any) -> None:
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # the user insists: do not wait for the running episodes
            super()._record(signum, frame)

    request = Insistent()
    request.install(is_root=True)  # every rank records (training's ranks other than 0 ignore the signals)
    try:
        yield lambda: request.signal is not None
    finally:
        request.restore()


def episode_seed(base_seed: int, k: int) -> int:
    """The reset seed of evaluation episode k: independent of the rank that runs it."""
    # 53 bits: the per-episode table is float64 (it is summed over ranks) and must hold the seed exactly
    return int(np.random.SeedSequence([base_seed, k]).generate_state(1, np.uint64)[0] >> np.uint64(11))


def eval_env_config(train_env: dict[str, Any], settings: EvalSettings) -> EnvConfig:
    """The training env with the evaluation's difficulty, obstacles and physics (the control rate is kept)."""
    if train_env["id"] != ENV_ID:
        raise EvalError(f"lrun eval scores lrun/Run-v0 policies; this checkpoint was trained on {train_env['id']!r}")
    return EnvConfig(
        id=ENV_ID,
        difficulty=settings.difficulty,
        max_obstacles=settings.obstacles,
        physics=settings.physics,
        frame_skip=train_env["frame_skip"],
        kwargs={"weakening": settings.weakening},
    )


def default_out(checkpoint: Path, settings: EvalSettings) -> Path:
    """RUN_DIR/eval/d<difficulty>-o<obstacles>-s<seed>-n<episodes>, next to the checkpoint's run, with the physics
    and the muscle weakening appended where they are not the graders' (so results of other settings never share
    a directory). A shipped model's directory (one with a PROVENANCE, e.g. models/walk) is part of the
    repository, so its evaluations go to runs/eval/<model>/ under the working directory instead."""
    from lrun.env.physics import ALIASES, GRADERS_PHYSICS

    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    base = Path("runs") / "eval" / run_dir.name if (run_dir / "PROVENANCE").is_file() else run_dir / "eval"
    name = f"d{settings.difficulty}-o{settings.obstacles}-s{settings.seed}-n{settings.episodes}"
    if ALIASES.get(settings.physics, settings.physics) != GRADERS_PHYSICS:
        name += f"-{ALIASES.get(settings.physics, settings.physics)}"
    if settings.difficulty == 2 and settings.weakening != "graders-2017":
        name += f"-{settings.weakening}"
    return base / name


def run_episode(
    env: Any,
    agent: Agent,
    seed: int,
    k: int,
    deterministic: bool,
    writer: TrajectoryWriter | None,
    facts: dict[str, Any],
    policy_version: int,
) -> np.ndarray:
    """One episode from reset(seed) to its end; appends its steps and table row to `writer`; returns its
    COLUMNS row."""
    raw, info = env.reset(seed=seed)
    agent.reset()  # a policy with memory starts the episode with none
    if not deterministic:
        torch.manual_seed(seed)  # sampled actions too depend only on the episode, not on the rank that runs it
    book = EpisodeBook(1, 0, len(raw), facts, first_row=writer.n_steps if writer else 0, first_counter=k)
    book.start(0, {"episode_seed": seed, "layout": info.get("layout")})
    records: dict[str, list] = {name: [] for name in ("obs", "excitations", "reward", "terminated", "truncated")}
    records.update(value=[], logprob=[], step_in_episode=[])
    terms: dict[str, list] = {name: [] for name in facts["reward_terms"]}
    total = 0.0
    while True:
        actions, logprob, value = agent.act_with_details(raw[None], deterministic)
        excitations = actions[0]
        obs, reward, terminated, truncated, info = env.step(excitations)
        total += reward
        _, steps, rows = book.step_rows()
        for name, item in (
            ("obs", raw),
            ("excitations", excitations),
            ("reward", reward),
            ("terminated", terminated),
            ("truncated", truncated),
            ("value", value[0]),
            ("logprob", logprob[0]),
            ("step_in_episode", steps[0]),
        ):
            records[name].append(item)
        for name in terms:
            terms[name].append(info.get(name, np.nan))
        raw = obs
        if terminated or truncated:
            break
    n = len(records["reward"])
    # env steps of 0.01 s: a fall can end an episode part way through a frame skip (not length x skip)
    sim_steps = int(getattr(env.unwrapped, "step_count", n))
    info = dict(info, episode={"return": total, "task_return": total, "length": n, "sim_steps": sim_steps})
    book.finish(0, info, bool(terminated), obs, int(rows[0]), policy_version)
    episode = book.take_finished()
    if writer is not None:
        columns = {name: np.asarray(values) for name, values in records.items()}
        columns.update(
            env_index=np.zeros(n, np.int16),
            episode_id=np.full(n, k, np.int64),
            policy_version=np.full(n, policy_version, np.int32),
        )
        writer.append_steps(columns, {name: np.asarray(v, np.float32) for name, v in terms.items()})
        writer.append_episodes(episode)
        writer.flush()
    sim_time = sim_steps * STEP_SECONDS
    return np.array(
        [
            k,
            seed,
            episode["distance"][0],
            total,
            n,
            sim_time,
            episode["fell"][0],
            episode["integrator_failure"][0],
        ],
        dtype=np.float64,
    )


def summarise(table: np.ndarray) -> dict[str, float]:
    """Mean/median distance, fall rate with its 95 % Wilson interval, mean speed, integrator failures."""
    col = {name: table[:, i] for i, name in enumerate(COLUMNS)}
    n = len(table)
    falls = int(col["fell"].sum())
    low, high = wilson_interval(falls, n)
    return {
        "episodes": n,
        "mean_distance_m": float(col["distance"].mean()),
        "median_distance_m": float(np.median(col["distance"])),
        "std_distance_m": float(col["distance"].std()),
        "falls": falls,
        "fall_rate": falls / n,
        "fall_rate_ci95": [low, high],
        "mean_speed_m_s": float((col["distance"] / col["sim_time_s"]).mean()),
        "mean_task_return": float(col["task_return"].mean()),
        "mean_length": float(col["length"].mean()),
        "integrator_failures": int(col["integrator_failure"].sum()),
    }


def format_summary(summary: dict[str, Any], settings: EvalSettings) -> str:
    """The summary as a few lines, with the 2017 results beside a result of the same setting (round 2)."""
    low, high = summary["fall_rate_ci95"]
    setting = settings.setting
    named = f"setting {setting}: " if setting else ""
    weak = f", {settings.weakening} weakening" if settings.difficulty == 2 else ""
    lines = [
        f"{summary['episodes']} episodes, {named}difficulty {settings.difficulty}, "
        f"{f'{settings.obstacles} obstacles' if settings.difficulty else 'no obstacles'}, "
        f"{settings.physics} physics{weak}, {'deterministic' if settings.deterministic else 'stochastic'} "
        f"policy, seed {settings.seed}",
        f"  distance   mean {summary['mean_distance_m']:.2f} m, median {summary['median_distance_m']:.2f} m "
        f"(std {summary['std_distance_m']:.2f})",
        f"  falls      {summary['falls']} = {100 * summary['fall_rate']:.1f} % "
        f"(95 % CI {100 * low:.1f}-{100 * high:.1f} %)",
        f"  speed      mean {summary['mean_speed_m_s']:.2f} m/s; task return {summary['mean_task_return']:.2f}",
        f"  integrator failures {summary['integrator_failures']}",
    ]
    if setting == "round2":
        lines.append(f"  {ROUND2_2017}")
    return "\n".join(lines)


def kept_settings(settings: EvalSettings) -> dict[str, Any]:
    """The settings an evaluation's episodes depend on (a resume keeps them), physics by its canonical name."""
    from lrun.env.physics import ALIASES

    kept = {k: v for k, v in asdict(settings).items() if k not in RESUMABLE_CHANGES}
    kept["physics"] = ALIASES.get(settings.physics, settings.physics)
    return kept


def eval_plan(path: Path, version: int, settings: EvalSettings, meta: dict[str, Any]) -> dict[str, Any]:
    """What an evaluation's episodes depend on: the checkpoint (by content) and the settings a resume keeps
    (physics by its canonical name, so an alias resumes); the code (lrun version and git state from `meta`,
    `run_metadata()`) is recorded, not compared."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    code = {"lrun": meta["versions"]["lrun"], **meta["git"]}
    return {
        "checkpoint": str(path),
        "sha256": digest,
        "iteration": version,
        "settings": kept_settings(settings),
        "sittings": [code],
    }


def evaluation_state(out: Path, checkpoint: Path, settings: EvalSettings) -> str:
    """What `out` holds for this checkpoint (by content) and these settings: "done" (an eval.json of at least
    `settings.episodes` episodes), "partial" (an evaluation of them to continue with --resume), "other"
    (another policy's or setting's, or one that cannot be read) or "none"."""
    plan_file = out / EVAL_PLAN_NAME
    if not plan_file.exists():
        return "other" if out.exists() and any(out.iterdir()) else "none"
    try:
        plan = json.loads(plan_file.read_text())
    except (OSError, ValueError):
        return "other"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    if plan.get("sha256") != digest or plan.get("settings") != kept_settings(settings):
        return "other"
    try:  # the summary of this plan's evaluation: its policy version and all its episodes
        summary = json.loads((out / "eval.json").read_text())
        finished = summary["iteration"] == plan["iteration"] and summary["summary"]["episodes"] == plan["episodes"]
    except (OSError, ValueError, KeyError, TypeError):
        finished = False
    return "done" if finished and int(plan["episodes"]) >= settings.episodes else "partial"


def check_out(out: Path, plan: dict[str, Any], settings: EvalSettings) -> dict[str, Any] | None:
    """Refuse an --out that would lose or mix results; on --resume, one that is not this evaluation's, and
    return the plan it holds (None without --resume)."""
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} is a file: name a directory for the evaluation")
    plan_file = out / EVAL_PLAN_NAME
    if settings.resume:
        if not plan_file.exists():
            if (out / "eval.json").exists():
                raise EvalError(
                    f"--resume: {out} holds an evaluation from before --resume existed (no {EVAL_PLAN_NAME}): "
                    "run it again with --overwrite"
                )
            raise EvalError(f"--resume: {out} holds no evaluation to continue (no {EVAL_PLAN_NAME})")
        try:
            earlier = json.loads(plan_file.read_text())
        except (OSError, ValueError) as exc:
            raise EvalError(f"--resume: {plan_file} is unreadable ({exc}); start again with --overwrite") from None
        if earlier.get("sha256") != plan["sha256"]:
            raise EvalError(
                f"--resume: {out} evaluates {earlier.get('checkpoint')} (iteration {earlier.get('iteration')}), "
                f"not {plan['checkpoint']} (iteration {plan['iteration']}): another policy"
            )
        changed = sorted(k for k, v in plan["settings"].items() if earlier.get("settings", {}).get(k) != v)
        if changed:
            was = ", ".join(f"{k} {earlier['settings'].get(k)!r} (now {plan['settings'][k]!r})" for k in changed)
            raise EvalError(f"--resume: {out} was evaluated with {was}: a resume keeps the settings")
        if settings.episodes < int(earlier.get("episodes", 0)):
            raise EvalError(
                f"--resume: {out} runs {earlier['episodes']} episodes; --episodes {settings.episodes} would drop "
                "some (a resume may raise it, not lower it)"
            )
        return earlier
    if (out / "eval.json").exists() and not settings.overwrite:
        raise EvalError(f"{out} already holds an evaluation: choose another --out or pass --overwrite")
    if plan_file.exists() and not settings.overwrite:
        raise EvalError(
            f"{out} holds an unfinished evaluation: continue it with --resume, or pass --overwrite to start again"
        )
    return None


def keep_summary(out: Path, before: int, now: int) -> None:
    """Before a resume: a complete evaluation being extended keeps its summary as eval-n<before>.json and
    episodes-n<before>.csv; eval.json and episodes.csv are gone until the resumed evaluation writes them."""
    for name, kept in (("eval.json", f"eval-n{before}.json"), ("episodes.csv", f"episodes-n{before}.csv")):
        if (out / name).exists():
            if now > before:
                (out / name).replace(out / kept)
            else:
                (out / name).unlink()


def stored_rows(out: Path, episodes: int, base_seed: int) -> np.ndarray:
    """The COLUMNS rows of the episodes finished in OUT's rank files (zero rows for the others).

    Each rank file is first cut back to its last finished episode, so the files hold every episode once and
    whole; an episode stored twice or with another seed than its own is refused (EvalError).
    """
    from lrun.store.reader import open_h5

    table = np.zeros((episodes, len(COLUMNS)))
    for path in rank_files(out):
        keep_finished_episodes(path)
        names = ("id", "seed", "distance", "task_return", "length", "sim_steps", "fell", "integrator_failure")
        with open_h5(path) as f:
            e = {name: f[f"episodes/{name}"][:] for name in names}
        for i, k in enumerate(e["id"]):
            if not 0 <= k < episodes:
                raise EvalError(f"{path} holds episode {k}, beyond --episodes {episodes}")
            if table[k, COLUMNS.index("length")] > 0 or e["seed"][i] != episode_seed(base_seed, int(k)):
                raise EvalError(f"{path}: episode {k} is stored twice or with another seed than its own")
            table[k] = [
                k,
                e["seed"][i],
                e["distance"][i],
                e["task_return"][i],
                e["length"][i],
                e["sim_steps"][i] * STEP_SECONDS,
                e["fell"][i],
                e["integrator_failure"][i],
            ]
    return table


def falls_of(out: Path, table: np.ndarray) -> dict[str, Any]:
    """Where the evaluation's episodes fell or stopped (lrun.analysis.falls), from its table and the obstacles and
    strengths its store holds for each episode."""
    from lrun.analysis.falls import approach_breakdown, falls_breakdown

    with RunStore(out) as store:
        e = store.episodes(["id", "obstacles", "psoas", "fell", "final_obs"])
        steps = store.steps(["obs", "episode_id"])
    n = len(table)
    obstacles = np.full((n, *e["obstacles"].shape[1:]), np.nan)
    strengths = np.ones((n, 2))
    obstacles[e["id"]] = e["obstacles"]
    strengths[e["id"]] = e["psoas"]
    col = {name: table[:, i] for i, name in enumerate(COLUMNS)}
    result = falls_breakdown(col["distance"], col["fell"], obstacles, strengths)
    # each episode's observations in order, its final one last (rank files hold whole episodes, in step order)
    order = np.argsort(steps["episode_id"], kind="stable")
    ids, starts = np.unique(steps["episode_id"][order], return_index=True)
    bounds = dict(zip(ids.tolist(), zip(starts, [*starts[1:], len(order)])))
    episodes = (
        (np.vstack([steps["obs"][order[a:b]], e["final_obs"][k][None]]), e["obstacles"][k], bool(e["fell"][k]))
        for k, episode in enumerate(e["id"].tolist())
        for a, b in [bounds.get(episode, (0, 0))]
    )
    result["approaches"] = approach_breakdown(episodes)
    return result


def gait_of(out: Path) -> dict[str, Any]:
    """How the knees were used over every stored step of the evaluation (lrun.analysis.gait.knee_gait)."""
    with RunStore(out) as store:
        return knee_gait(store.steps(["obs"])["obs"])


def describe_falls(out: Path, table: np.ndarray, settings: EvalSettings, png: Path) -> tuple[dict[str, Any], list[str]]:
    """Where the evaluation's episodes fell (falls_of), as summary lines and a figure at `png`."""
    from lrun.analysis.falls import format_breakdown, plot_breakdown

    falls = falls_of(out, table)
    setting = settings.setting or f"difficulty {settings.difficulty}, {settings.obstacles} obstacles"
    title = f"{falls['falls']} falls in {falls['episodes']} episodes ({setting}, {settings.physics} physics)"
    plot_breakdown(falls, png, title=title)
    return falls, format_breakdown(falls)


def eval_report(out: str | Path) -> tuple[str, Path | None]:
    """`lrun report` of an evaluation directory: its summary with where its episodes fell (and OUT/report/falls.png
    where it had obstacles or weakened muscles)."""
    out = Path(out)
    not_summary = f"{out / 'eval.json'} is not an lrun evaluation's summary"
    try:
        result = json.loads((out / "eval.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"{not_summary} ({exc})") from None
    if not isinstance(result, dict):
        raise EvalError(f"{not_summary} (not a JSON object)")
    missing = [key for key in ("checkpoint", "iteration", "summary", "settings") if key not in result]
    if missing or not isinstance(result["settings"], dict):
        raise EvalError(f"{not_summary} (no {', '.join(missing) or 'settings table'})")
    known = set(EvalSettings.__dataclass_fields__)
    try:
        settings = EvalSettings(**{k: v for k, v in result["settings"].items() if k in known})
    except TypeError as exc:
        raise EvalError(f"{not_summary} (settings: {exc})") from None
    try:
        rows = np.loadtxt(out / "episodes.csv", delimiter=",", skiprows=1, ndmin=2)
    except ValueError as exc:
        raise EvalError(f"{out / 'episodes.csv'} is not an lrun evaluation's episode table ({exc})") from None
    lines = [f"{result['checkpoint']} (iteration {result['iteration']})", format_summary(result["summary"], settings)]
    if isinstance(result.get("gait"), dict):  # evaluations from before 2026-12-05 have none
        lines.append(format_knee_gait(result["gait"]))
    if not settings.difficulty:
        return "\n".join(lines), None
    png = out / "report" / "falls.png"
    lines += describe_falls(out, rows, settings, png)[1]
    return "\n".join(lines), png


def evaluate(
    checkpoint: str | Path,
    settings: EvalSettings,
    comm: Any = None,
    stream: TextIO | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run the evaluation on this rank (collective over `comm`); rank 0 returns the summary and the table.

    `stop` (e.g. "a stop signal arrived"), asked before each episode: once it says yes, the rank runs no more
    episodes, and when every rank is through, all raise EvaluationStopped (no summary is written; --resume
    continues from the episodes each rank flushed)."""
    stream = stream or sys.stdout
    comm = comm if comm is not None else lmpi.comm_world()
    torch.set_num_threads(1)  # one core per rank, as in training: the ranks share the node's cores
    rank, size = comm.Get_rank(), comm.Get_size()
    # checks every rank makes alike, before any MPI traffic
    if settings.episodes < 1:
        raise ConfigError("--episodes must be >= 1")
    if settings.seed < 0:
        raise ConfigError(f"--seed {settings.seed}: must be >= 0 (episode seeds derive from it)")
    if settings.difficulty not in (0, 1, 2) or settings.obstacles < 0:
        raise ConfigError("--difficulty must be 0, 1 or 2 and --obstacles >= 0")
    from lrun.env.layout import WEAKENING
    from lrun.env.physics import PHYSICS_NAMES, PRESETS

    if settings.physics not in PHYSICS_NAMES:
        raise ConfigError(f"--physics must be one of {', '.join(PRESETS)}")
    if settings.weakening not in WEAKENING:
        raise ConfigError(f"--weakening must be one of {', '.join(WEAKENING)}")
    path = resolve_checkpoint(resolve_model(checkpoint))
    policy, normaliser, payload = load_policy(path)
    env_config = eval_env_config(payload["config"]["env"], settings)
    agent = Agent.from_loaded(policy, normaliser, payload, path)
    train_config = agent.config
    out = Path(settings.out) if settings.out else default_out(path, settings)
    version = int(payload["iteration"])
    meta = run_metadata()
    plan = eval_plan(path, version, settings, meta)
    earlier = check_out(out, plan, settings)
    waiter = lmpi.Waiter(train_config.run.wait_sleep)
    lmpi.allreduce_sum(comm, np.zeros(1), waiter)  # every rank has passed its checks before rank 0 touches OUT
    done = np.zeros((settings.episodes, len(COLUMNS)))  # rows of the episodes an earlier sitting finished
    problem = ""
    if rank == 0:
        try:
            if settings.resume:
                done = stored_rows(out, settings.episodes, settings.seed)
                plan["sittings"] = earlier.get("sittings", []) + plan["sittings"]  # the code of every sitting
                keep_summary(out, int(earlier["episodes"]), settings.episodes)
            else:  # a new evaluation, or --overwrite: nothing of an earlier one may pass for this one's results
                if (out / "trajectories").exists():
                    shutil.rmtree(out / "trajectories")
                for stale in ("eval.json", "episodes.csv", "falls.png", "eval-n*.json", "episodes-n*.csv"):
                    for path_ in out.glob(stale):
                        path_.unlink()
        except (EvalError, StoreError, OSError, ValueError, KeyError) as exc:
            problem = f"--resume: {exc}"
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / EVAL_PLAN_NAME).write_text(json.dumps({**plan, "episodes": settings.episodes}, indent=1) + "\n")
    # what is done (a finished episode took >= 1 step) and whether rank 0 could read it, known to every rank
    finished = np.append(done[:, COLUMNS.index("length")] > 0, bool(problem)).astype(np.float64)
    lmpi.allreduce_sum(comm, finished, waiter)
    if finished[-1]:
        raise EvalError(problem or "rank 0 could not read the earlier episodes")
    remaining = [k for k in range(settings.episodes) if not finished[k]]
    env = env_factory(env_config)()
    facts = env_facts(env)
    config_json = json.dumps({**train_config.to_dict(), "env": asdict(env_config), "eval": asdict(settings)})
    attrs = trajectory_attributes(
        config_json,
        env_config.id,
        rank,
        0,
        checkpoint=str(path),
        weakening=facts["weakening"],
        **flat_attributes(meta),
    )
    writer = TrajectoryWriter(
        out / "trajectories" / f"rank-{rank:04d}.h5",
        int(np.prod(env.observation_space.shape)),  # the task's observations (the policy may see features)
        payload["meta"]["act_size"],
        facts["max_obstacles"],
        facts["reward_terms"],
        attrs,
        facts["labels"],
    )
    mine = remaining[rank::size]
    table = done.copy()  # non-zero on rank 0 only
    started = time.perf_counter()
    if rank == 0:
        print(
            f"lrun eval: {path} (iteration {version}) on {settings.episodes} episodes over {size} rank"
            f"{'s' if size > 1 else ''}; results in {out}",
            file=stream,
            flush=True,
        )
        if len(remaining) < settings.episodes:
            print(
                f"  resumed: {settings.episodes - len(remaining)} episodes finished earlier, {len(remaining)} to run",
                file=stream,
                flush=True,
            )
        trained = train_config.env
        unseen_obstacles = settings.difficulty and trained.max_obstacles != settings.obstacles
        if trained.difficulty != settings.difficulty or unseen_obstacles:
            # a policy meets a task it never saw (e.g. the walker on round 2's defaults): say so before minutes pass
            print(f"  note: this policy was trained on {agent.trained_on()}", file=stream, flush=True)
    stopped = False
    try:
        for count, k in enumerate(mine, 1):
            if stop is not None and stop():
                stopped = True  # between episodes: what is finished is flushed; --resume runs the rest
                break
            table[k] = run_episode(
                env, agent, episode_seed(settings.seed, k), k, settings.deterministic, writer, facts, version
            )
            if rank == 0:
                elapsed = time.perf_counter() - started
                print(
                    f"  rank 0: {count}/{len(mine)} episodes ({elapsed:.0f} s; episode {k}: "
                    f"{table[k, 2]:.2f} m{', fell' if table[k, 6] else ''})",
                    file=stream,
                    flush=True,
                )
    finally:
        writer.close()
        env.close()
    # every rank comes here, stopped or not (a rank the signal missed after its share), so no collective is left
    # waiting; then all know whether any rank stopped early
    halted = np.array([float(stopped)])
    lmpi.allreduce_sum(comm, halted, waiter)
    if halted[0]:
        raise EvaluationStopped(f"{out}: stopped part way; the finished episodes are kept (--resume runs the rest)")
    lmpi.allreduce_sum(comm, table, waiter)  # each episode's row is non-zero on exactly one rank
    if rank != 0:
        return {}
    write_master(out)
    summary = summarise(table)
    with open(out / "episodes.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(COLUMNS)
        for row in table:
            w.writerow([repr(float(v)) if name in FLOAT_COLUMNS else int(v) for name, v in zip(COLUMNS, row)])
    result = {
        "checkpoint": str(path),
        "iteration": version,
        "settings": {**asdict(settings), "setting": settings.setting},
        "summary": summary,
    }
    result["gait"] = gait_of(out)
    lines = [format_summary(summary, settings), format_knee_gait(result["gait"])]
    figure = ""
    if settings.difficulty:  # obstacles or weakened muscles: where the episodes fell, and at what
        result["falls"], breakdown = describe_falls(out, table, settings, out / "falls.png")
        lines += breakdown
        figure = f", {out / 'falls.png'}"
    (out / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(lines), file=stream, flush=True)
    print(f"wrote {out / 'eval.json'}, {out / 'episodes.csv'}{figure} and the episodes' trajectories", file=stream)
    return {**result, "table": table, "out": str(out)}
