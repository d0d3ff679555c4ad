"""`lrun curriculum`: run training stages in order, each starting from its parent stage's final checkpoint.

A curriculum file (TOML) names a root directory and its stages:

    root = "runs/curriculum"
    [[stage]]
    name = "walk"
    config = "stages/walk.toml"          # relative to the curriculum file
    set = ["run.iterations=2"]           # optional overrides (tiny variants)
    [[stage]]
    name = "run"
    config = "stages/run.toml"
    parent = "walk"
    transfer = "blend"                   # init (default), blend or clone

A stage trained elsewhere names its checkpoint instead of a config (`checkpoint = "../models/walk"`, relative to
the curriculum file): it is not run, and its children start from that checkpoint (as `--from STAGE=CKPT` does on
the command line, which takes precedence).

Stage S runs in ROOT/S. A stage whose final checkpoint exists is skipped; one with an earlier checkpoint is
resumed; a new one starts from its parent's final checkpoint, by `transfer`: `init` loads it into a network of
the same size (`run.init_from`), `blend` freezes it and blends it with the stage's (bigger) network
(`blend.source`), `clone` imitates it on its stored states and then trains (`clone.teacher`). So re-running the
same command continues where it stopped. Every rank of the MPI world runs every stage in turn.

With `--eval N`, each finished stage's final checkpoint is scored (`lrun eval`, deterministic, the graders'
physics, N episodes of one seed) at its own task and at the 2017 round 2, in ROOT/eval/STAGE/SETTING; an
evaluation already there is kept, one stopped part way is resumed. Every run of the command ends by writing the
curriculum's table and picture (ROOT/curriculum.md, .json, .png: lrun.analysis.curriculum_report) from what is
on disk.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from lrun.analysis.curriculum_report import ROUND2, StageFacts, write_curriculum_report
from lrun.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, resolve_checkpoint
from lrun.config import ConfigError, TrainConfig, load_config, read_toml


@dataclass
class Stage:
    """One stage of a curriculum."""

    name: str
    config: Path
    parent: str | None = None
    overrides: list[str] = field(default_factory=list)
    transfer: str = "init"
    checkpoint: Path | None = None  # trained elsewhere: not run, its children start from this checkpoint


#: How a stage takes its parent's final checkpoint: the config key that receives its path.
TRANSFER_KEYS = {"init": "run.init_from", "blend": "blend.source", "clone": "clone.teacher"}


@dataclass
class Curriculum:
    """Stages in order and the directory their runs live in."""

    root: Path
    stages: list[Stage]


def load_curriculum(path: str | Path, root: str | None = None) -> Curriculum:
    """Read and check a curriculum file (unknown keys, unknown parents, parents after children are errors)."""
    path = Path(path)
    data = read_toml(path, "curriculum")
    unknown = set(data) - {"root", "stage"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; a curriculum has root and [[stage]] tables")
    stages: list[Stage] = []
    for i, entry in enumerate(data.get("stage", [])):
        bad = set(entry) - {"name", "config", "parent", "set", "transfer", "checkpoint"}
        if bad or "name" not in entry or ("config" in entry) == ("checkpoint" in entry):
            raise ConfigError(
                f"{path}: stage {i + 1}: needs a name and either a config (and may have parent, set, transfer) or "
                f"the checkpoint of a stage trained elsewhere; unknown: {sorted(bad)}"
            )
        if "checkpoint" in entry and set(entry) - {"name", "checkpoint"}:
            raise ConfigError(
                f"{path}: stage {entry['name']!r}: a stage given by its checkpoint has a name and nothing else"
            )
        transfer = entry.get("transfer", "init")
        if transfer not in TRANSFER_KEYS:
            raise ConfigError(
                f"{path}: stage {entry['name']!r}: transfer must be one of {', '.join(TRANSFER_KEYS)}, got {transfer!r}"
            )
        if entry["name"] in [s.name for s in stages]:
            raise ConfigError(f"{path}: stage {i + 1}: name {entry['name']!r} is taken by an earlier stage")
        parent = entry.get("parent")
        if parent is not None and parent not in [s.name for s in stages]:
            raise ConfigError(f"{path}: stage {entry['name']!r}: parent {parent!r} is not an earlier stage")
        config = path.parent / entry["config"] if "config" in entry else path
        checkpoint = path.parent / entry["checkpoint"] if "checkpoint" in entry else None
        stages.append(Stage(entry["name"], config, parent, list(entry.get("set", [])), transfer, checkpoint))
    if not stages:
        raise ConfigError(f"{path}: no [[stage]] tables")
    return Curriculum(Path(root or data.get("root", "runs/curriculum")), stages)


def stage_config(
    curriculum: Curriculum, stage: Stage, overrides: list[str], provided: dict[str, str] | None = None
) -> TrainConfig:
    """The stage's training config with its run directory and parent checkpoint filled in (a parent named in
    `provided` hands on that checkpoint instead of its own run's)."""
    extra = [f"run.run_dir={curriculum.root / stage.name}"]
    if stage.parent is not None:
        if provided and stage.parent in provided:
            parent_checkpoint = resolve_checkpoint(provided[stage.parent])
        else:
            parent_checkpoint = latest_checkpoint(curriculum.root / stage.parent)
        extra.append(f"{TRANSFER_KEYS[stage.transfer]}={parent_checkpoint}")
    return load_config(stage.config, [*stage.overrides, *overrides, *extra])


def stage_status(config: TrainConfig) -> tuple[str, int]:
    """('done' | 'resume' | 'new', completed iterations) from the stage's latest checkpoint."""
    latest = latest_checkpoint(config.run.run_dir)
    if not latest.is_file():
        return "new", 0
    iteration = int(load_checkpoint(latest)["iteration"])
    return ("done" if iteration >= config.run.iterations else "resume"), iteration


#: The episode seed of the stages' evaluations unless told otherwise: the README's round-2 headline's, so a
#: stage meets the same episodes as models/round2 did and `lrun compare` can pair them episode by episode.
EVAL_SEED = 4242
#: What an evaluation directory can hold for a stage's checkpoint (lrun.evaluate.evaluation_state).
EVAL_STATES = ("none", "partial", "done", "other")


def stage_evaluations(env: dict[str, Any], episodes: int, seed: int) -> dict[str, Any]:
    """label -> `lrun eval` settings of a stage: its own task (difficulty, obstacles and weakening of its training
    env, the graders' physics) and the 2017 round 2; one entry when the stage trains on round 2, none when it
    trains on another env than lrun/Run-v0 (lrun eval scores Learning to Run policies only)."""
    from lrun.env import ENV_ID
    from lrun.evaluate import EvalSettings

    if env.get("id", ENV_ID) != ENV_ID:
        return {}
    difficulty = int(env["difficulty"])
    own = EvalSettings(
        episodes=episodes,
        difficulty=difficulty,
        obstacles=int(env["max_obstacles"]) if difficulty else 0,
        seed=seed,
        weakening=(env.get("kwargs") or {}).get("weakening", "graders-2017"),
    )
    label = own.setting or f"d{difficulty}-o{own.obstacles}-{own.weakening}"
    round2 = EvalSettings(episodes=episodes, seed=seed)  # lrun eval's defaults are the round-2 setting
    return {label: own} if label == ROUND2 else {label: own, ROUND2: round2}


def eval_dir(root: Path, stage: str, label: str, seed: int) -> Path:
    """Where a stage's evaluation at `label` on episode seed `seed` lives: ROOT/eval/STAGE/LABEL-sSEED (another
    seed never overwrites it)."""
    return root / "eval" / stage / f"{label}-s{seed}"


def evaluate_stage(
    root: Path,
    stage: str,
    checkpoint: Path,
    episodes: int,
    seed: int,
    comm: Any,
    stream: TextIO,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Score a finished stage at its own task and at round 2 (collective over `comm`): an evaluation already
    done is kept, one stopped part way resumed, one of an earlier policy of the stage (trained again) replaced.
    Once `stop` says so (a stop signal arrived), the evaluation ends between episodes on every rank with
    EvaluationStopped (a re-run resumes it)."""
    from lrun import mpi as lmpi
    from lrun.analysis.common import planned_episodes
    from lrun.evaluate import evaluate, evaluation_state

    speak = comm.Get_rank() == 0
    env = load_checkpoint(checkpoint)["config"]["env"]  # the task the policy was trained on, whatever the TOML says
    evaluations = stage_evaluations(env, episodes, seed)
    if not evaluations and speak:
        print(
            f"== stage {stage}: not evaluated (lrun eval scores lrun/Run-v0 policies, not {env.get('id')})",
            file=stream,
            flush=True,
        )
    for label, settings in evaluations.items():
        out = eval_dir(root, stage, label, seed)
        state = np.zeros(2)
        if speak:  # one rank reads the directory, so every rank takes the same branch
            what = evaluation_state(out, checkpoint, settings)
            state[:] = EVAL_STATES.index(what), planned_episodes(out) or 0
        lmpi.bcast(comm, state, 0, lmpi.Waiter())
        what = EVAL_STATES[int(state[0])]
        if what == "done":
            if speak:
                print(f"== stage {stage}: evaluation at {label} already done ({out})", file=stream, flush=True)
            continue
        if what == "partial":  # a resume may extend an evaluation, never cut it
            settings.episodes = max(settings.episodes, int(state[1]))
        if speak:
            doing = {"none": "evaluating", "partial": "resuming the evaluation", "other": "evaluating again"}
            n = settings.episodes
            print(
                f"== stage {stage}: {doing[what]} at {label} ({n} episode{'s' if n != 1 else ''}, seed {seed}) "
                f"in {out}" + (" (it held another policy's or setting's evaluation)" if what == "other" else ""),
                file=stream,
                flush=True,
            )
        settings.out = str(out)
        settings.resume = what == "partial"
        settings.overwrite = what == "other"  # an earlier policy of this stage (trained again)
        evaluate(checkpoint, settings, comm=comm, stream=stream, stop=stop)


def shipped_run(checkpoint: Path) -> Path | None:
    """The directory that holds a provided checkpoint's training log (progress.csv beside it, as under models/,
    or in its run directory), or None."""
    from lrun.progress import progress_path

    folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return folder if progress_path(folder).is_file() else None


def stage_facts(
    curriculum: Curriculum,
    stage: Stage,
    config: TrainConfig | None,
    checkpoint: Path | None,
    provided: bool,
    seed: int = EVAL_SEED,
) -> StageFacts | None:
    """What the curriculum's table says of a stage, from its latest checkpoint (None if it has none yet) and its
    evaluations on episode seed `seed`."""
    if checkpoint is None or not checkpoint.is_file():
        return None
    payload = load_checkpoint(checkpoint)
    trained = payload["config"]
    algorithm = trained["run"].get("algorithm", "ppo")  # checkpoints from before SAC have no algorithm key
    evaluations = stage_evaluations(trained["env"], 1, seed)  # for their labels
    critics = trained.get("sac", {}).get("hidden_sizes") if algorithm == "sac" else None
    return StageFacts(
        name=stage.name,
        parent=stage.parent,
        transfer=stage.transfer if stage.parent else "-",
        provided=provided,
        algorithm=algorithm,
        actor=list(trained["policy"]["hidden_sizes"]),
        critics=list(critics) if critics else None,
        task=next(iter(evaluations), "-"),
        iterations=int(payload["iteration"]),
        planned=None if provided or config is None else config.run.iterations,
        env_steps=int(payload["env_steps"]),
        run_dir=shipped_run(checkpoint) if provided or config is None else Path(config.run.run_dir),
        evals={label: eval_dir(curriculum.root, stage.name, label, seed) for label in evaluations},
    )


def provided_stages(path: str | Path, curriculum: Curriculum, given: dict[str, str] | None) -> dict[str, str]:
    """The stages trained elsewhere: the file's `checkpoint =` stages and `--from STAGE=CHECKPOINT` (which wins),
    each resolved to its checkpoint file. ConfigError for an unknown stage or a checkpoint that is not there."""
    names = [s.name for s in curriculum.stages]
    given = given or {}
    provided = {**{s.name: str(s.checkpoint) for s in curriculum.stages if s.checkpoint}, **given}
    for name, checkpoint in provided.items():
        if name not in names:
            raise ConfigError(f"{path}: --from names no stage {name!r}; stages: {', '.join(names)}")
        # Name the source the user wrote: the command line's --from wins over the file's `checkpoint =`.
        source = f"--from {name}={checkpoint}" if name in given else f"{path}: stage {name!r}: checkpoint"
        try:
            provided[name] = str(resolve_checkpoint(checkpoint))
        except CheckpointError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return provided


def curriculum_report(
    path: str | Path,
    overrides: list[str] | None = None,
    root: str | None = None,
    provided: dict[str, str] | None = None,
    seed: int = EVAL_SEED,
) -> list[Path]:
    """Write ROOT/curriculum.md, .json and .png from the stages' checkpoints, progress and evaluations (on
    episode seed `seed`) on disk (one process; no training, no evaluation). ConfigError if ROOT holds no run."""
    curriculum = load_curriculum(path, root)
    if seed < 0:
        raise ConfigError("--eval-seed must be >= 0")
    given = provided_stages(path, curriculum, provided)
    if not curriculum.root.is_dir():
        raise ConfigError(f"{curriculum.root}: no such directory: this curriculum has not run there (--root?)")
    facts = []
    for stage in curriculum.stages:
        try:
            if stage.name in given:
                fact = stage_facts(curriculum, stage, None, Path(given[stage.name]), True, seed)
            else:
                config = stage_config(curriculum, stage, overrides or [], given)
                fact = stage_facts(curriculum, stage, config, latest_checkpoint(config.run.run_dir), False, seed)
        except CheckpointError as exc:
            raise ConfigError(f"stage {stage.name!r}: {exc}") from None
        if fact is not None:
            facts.append(fact)
    return write_curriculum_report(facts, curriculum.root, seed)


def run_curriculum(
    path: str | Path,
    overrides: list[str] | None = None,
    root: str | None = None,
    comm: Any = None,
    stream: TextIO | None = None,
    only: str | None = None,
    provided: dict[str, str] | None = None,
    eval_episodes: int = 0,
    eval_seed: int = EVAL_SEED,
) -> list[dict[str, Any]]:
    """Run every stage in order, or just stage `only` (collective over `comm`); returns per-stage summaries.

    With `eval_episodes`, each finished stage (provided ones included) is evaluated at its own task and at round
    2 before the next starts (`evaluate_stage`). Rank 0 ends by writing the curriculum's table and picture.

    With `only` (a Slurm job per stage), the stage's parent must be complete: its final checkpoint is where the
    stage starts. `provided` maps stage names to trained checkpoints (e.g. a shipped model under models/):
    those stages are not trained, and their children start from the given checkpoint.
    """
    from lrun import mpi as lmpi
    from lrun.evaluate import recorded_stop_signals

    stream = stream or sys.stdout
    comm = comm if comm is not None else lmpi.comm_world()
    speak = comm.Get_rank() == 0
    curriculum = load_curriculum(path, root)
    names = [s.name for s in curriculum.stages]
    provided = provided_stages(path, curriculum, provided)
    configs = [
        None if s.name in provided else stage_config(curriculum, s, overrides or [], provided)
        for s in curriculum.stages
    ]
    if only is not None and only not in names:
        raise ConfigError(f"{path}: no stage {only!r}; stages: {', '.join(names)}")
    if eval_episodes < 0 or eval_seed < 0:
        raise ConfigError("--eval and --eval-seed must be >= 0")
    summaries: list[dict[str, Any]] = []
    # Outside training (which takes the signals over and gives them back), a stop signal is recorded, not fatal:
    # it ends an evaluation between episodes, or the curriculum before its next stage, with exit code 3.
    with recorded_stop_signals() as stop:
        _run_stages(curriculum, configs, provided, only, eval_episodes, eval_seed, comm, stream, summaries, stop)
    if speak:  # the table and picture of every stage on disk, this run's and earlier ones'
        try:
            written = curriculum_report(path, overrides, root, provided, eval_seed)
            print(f"== curriculum: {', '.join(str(p) for p in written)}", file=stream, flush=True)
        except Exception as exc:  # a table must not turn a finished (or requeued) stage into a failure
            print(f"== curriculum: the table could not be written ({type(exc).__name__}: {exc})", file=stream)
    return summaries


def _run_stages(
    curriculum: Curriculum,
    configs: list[TrainConfig | None],
    provided: dict[str, str],
    only: str | None,
    eval_episodes: int,
    eval_seed: int,
    comm: Any,
    stream: TextIO,
    summaries: list[dict[str, Any]],
    stop: Callable[[], bool],
) -> None:
    """run_curriculum's loop over the stages: train (or skip) each, evaluate it, append its summary."""
    from lrun import mpi as lmpi
    from lrun.training import train

    speak = comm.Get_rank() == 0
    names = [s.name for s in curriculum.stages]

    def evaluated(name: str, checkpoint: Path) -> bool:
        """Evaluate a finished stage; False (and a 'stopped' summary) if a stop signal ended the evaluation."""
        from lrun.evaluate import EvaluationStopped

        try:
            evaluate_stage(curriculum.root, name, checkpoint, eval_episodes, eval_seed, comm, stream, stop)
        except EvaluationStopped as exc:
            summaries.append({"stage": name, "status": "stopped", "evaluation": str(exc)})
            if speak:
                print(f"== stage {name}: evaluation {exc}; re-run to continue", file=stream, flush=True)
            return False
        return True

    for stage, config in zip(curriculum.stages, configs):
        if only is not None and stage.name != only:
            continue
        if stage.name in provided:
            if speak:
                print(f"== stage {stage.name}: provided ({provided[stage.name]}): not trained", file=stream, flush=True)
            summaries.append({"stage": stage.name, "status": "provided"})
            if eval_episodes and not evaluated(stage.name, Path(provided[stage.name])):
                break
            continue
        if only is not None and stage.parent is not None and stage.parent not in provided:
            parent_config = configs[names.index(stage.parent)]
            if stage_status(parent_config)[0] != "done" and stage_status(config)[0] == "new":
                raise ConfigError(
                    f"stage {stage.name!r} starts from stage {stage.parent!r}, which has no final "
                    f"checkpoint in {parent_config.run.run_dir}"
                )
        status, done = stage_status(config)
        if speak:
            what = {
                "done": f"already complete ({done} iterations): skipped",
                "resume": f"resuming at iteration {done}",
                "new": "starting",
            }[status]
            origin = f" from {stage.parent}'s final checkpoint" if status == "new" and stage.parent else ""
            if origin and stage.parent in provided:
                origin = f" from {stage.parent} = {provided[stage.parent]}"
            print(f"== stage {stage.name}: {what}{origin}", file=stream, flush=True)
        if status == "done":
            summaries.append({"stage": stage.name, "status": "skipped", "iterations": done})
        else:
            signalled = np.array([float(stop())])  # a signal since the last stage: every rank must agree to stop
            lmpi.allreduce_sum(comm, signalled, lmpi.Waiter())
            if signalled[0]:
                summaries.append({"stage": stage.name, "status": "stopped"})
                if speak:
                    print(
                        f"== stage {stage.name}: not started (a stop signal came first); re-run to continue",
                        file=stream,
                        flush=True,
                    )
                break
            resume = config.run.run_dir if status == "resume" else None
            last = train(config, resume=resume, comm=comm, stream=stream)
            if last.get("stopped_early"):
                summaries.append({"stage": stage.name, "status": "stopped", "last": last})
                if speak:
                    print(f"== stage {stage.name}: stopped by a signal; re-run to continue", file=stream, flush=True)
                break
            summaries.append(
                {"stage": stage.name, "status": "trained", "iterations": config.run.iterations, "last": last}
            )
        if eval_episodes and not evaluated(stage.name, latest_checkpoint(config.run.run_dir)):
            break
