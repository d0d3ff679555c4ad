"""Global rank 0's side of a run: the run directory and its start-up lines, the scalars logged per iteration
(the common ones, and those the algorithm names), the checkpoints and the store's master file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import numpy as np

from lrun import mpi as lmpi
from lrun.checkpoint import describe_spec, save_checkpoint
from lrun.config import TrainConfig
from lrun.env import ENV_ID
from lrun.learn.policy import Policy
from lrun.logger import ProgressLogger
from lrun.rollout import EPISODE_COLUMNS, Rollout
from lrun.startup import Start
from lrun.store.reader import rank_files, write_master
from lrun.store.writer import cut_back
from lrun.training.algorithm import Algorithm
from lrun.training.engine import STOP_SIGNAL
from lrun.training.state import TrainingState


class Reporter:
    """Global rank 0's side of a run: the run directory and its start-up lines, the per-iteration log, the
    checkpoints and the store's master file."""

    def __init__(
        self,
        config: TrainConfig,
        start: Start,
        state: TrainingState,
        layout: lmpi.RankLayout,
        stream: TextIO,
        algorithm: Algorithm,
    ) -> None:
        self.config, self.state, self.stream, self.algorithm = config, state, stream, algorithm
        run_dir = prepare_run_dir(config, state.metadata)
        wandb = None
        if config.run.wandb_project:
            # one W&B run per lrun run: its id follows the run directory, so a resume continues it
            run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
            wandb = {"project": config.run.wandb_project, "config": config.to_dict(), "id": run_id}
        self.logger = ProgressLogger(
            run_dir, config.run.iterations, stream, config.run.progress, config.run.tensorboard, wandb
        )
        mode = (
            "serial mode: learner and simulator in one process (MPI world of size 1)"
            if layout.role == "serial"
            else world_description(layout)
        )
        self.say(f"lrun train: {mode}; run directory {run_dir}")
        for note in config.notes:  # keys given under an old name
            self.say(note)
        if start.source is not None:
            self.say(describe_start(start, state.policy))
        if start.payload is not None:
            self.logger.truncate_after(state.iteration, state.env_steps)
            self.say(
                f"resuming at iteration {state.iteration} ({state.env_steps} env steps, {state.decisions} decisions)"
            )
            for path in rank_files(run_dir):
                kept, _ = cut_back(path, state.iteration)
                self.say(f"  {path.name}: kept the {kept} steps of iterations < {state.iteration}")
        if state.transfer_note:
            self.say(state.transfer_note)
        if approximate_mirror(config, algorithm.mirrors()):
            self.say(
                "note: mirroring at difficulty 2 with the graders' muscle weakening is an approximation: the two "
                "strengths weaken glut_max_l and iliopsoas_r, which are not mirror images (env.kwargs weakening = "
                "'psoas' makes the mirror exact)"
            )
        for note in algorithm.notes():
            self.say(note)

    def say(self, line: str) -> None:
        """One line on the run's stream."""
        print(line, file=self.stream, flush=True)

    def stop_for_signal(self, state: TrainingState, signum: int, first_iteration: int) -> int:
        """A stop signal arrived: checkpoint (unless this iteration's is written) and say so. Rank 0 alone
        decides, between iterations, so no rank is left in a collective."""
        run = self.config.run
        if state.iteration > first_iteration and state.iteration % run.checkpoint_every:
            save_checkpoint(run.run_dir, state.payload(), state.iteration)
        self.say(
            f"lrun train: signal {signum} received: checkpoint at iteration {state.iteration} written; "
            f"stopping (resume with --resume {run.run_dir})"
        )
        return STOP_SIGNAL

    def log(
        self,
        state: TrainingState,
        wall_s: float,
        new_steps: int,
        new_decisions: int,
        learn_s: float,
        rollouts: list[Rollout],
        losses: dict[str, float],
        coefficient: float | None,
        mpi_s: dict[str, float] | None = None,
    ) -> dict:
        """Log the iteration and checkpoint where due; returns the logged scalars. `mpi_s`: the learner's
        seconds in each kind of MPI operation this iteration (`time/mpi_<operation>_s`)."""
        run = self.config.run
        scalars = iteration_scalars(
            state.iteration,
            state.env_steps,
            state.decisions,
            wall_s,
            new_steps,
            new_decisions,
            learn_s,
            rollouts,
            losses,
            state.problem.reward_terms,
            self.algorithm.scalars,
        )
        for operation, seconds in (mpi_s or {}).items():
            scalars[f"time/mpi_{operation}_s"] = seconds
        if coefficient is not None:
            scalars["blend/coefficient"] = coefficient
            scalars["blend/distillation_loss"] = losses.get("auxiliary_loss", 0.0)
        self.logger.log(scalars)
        if checkpoint_due(self.config, state.iteration):
            save_checkpoint(run.run_dir, state.payload(), state.iteration)
            if run.store_trajectories and state.iteration < run.iterations:
                write_master(run.run_dir)
        return scalars

    def close(self) -> None:
        """Release the progress display."""
        self.logger.close()

    def finish(self) -> None:
        """The store's master file over every rank file (all closed by now)."""
        if self.config.run.store_trajectories:
            write_master(self.config.run.run_dir)


def checkpoint_due(config: TrainConfig, iteration: int) -> bool:
    """Whether rank 0 checkpoints (and every learner saves what its algorithm keeps beside the checkpoint) after
    this iteration."""
    return iteration % config.run.checkpoint_every == 0 or iteration == config.run.iterations


def iteration_scalars(
    iteration: int,
    env_steps: int,
    decisions: int,
    wall_s: float,
    new_steps: int,
    new_decisions: int,
    learn_s: float,
    rollouts: list[Rollout],
    losses: dict[str, float],
    reward_terms: tuple[str, ...] = (),
    loss_columns: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """The scalars logged per iteration (CleanRL-style names); `reward/<term>` is a term's mean per decision.
    `loss_columns` (the algorithm's `scalars`: column -> loss key) says which of `losses` are logged, and as
    what; a loss the algorithm did not report this iteration is NaN (SAC before its first update).

    `env_steps` and `charts/steps_per_s` count simulated env steps (0.01 s each in RunEnv, whatever the frame
    skip), so runs with different frame skips compare on one budget; `decisions` counts the agent's steps.
    """
    episodes = np.concatenate([r.episodes for r in rollouts]) if rollouts else np.zeros((0, len(EPISODE_COLUMNS)))
    column = {name: episodes[:, i] for i, name in enumerate(EPISODE_COLUMNS)}
    simulate = float(np.mean([r.simulate_s for r in rollouts]))
    wait = float(np.mean([r.wait_s for r in rollouts]))
    store = float(np.mean([r.store_s for r in rollouts]))
    nan = float("nan")
    some = len(episodes) > 0

    def mean(name: str) -> float:
        return float(column[name].mean()) if some else nan

    return {
        "iteration": iteration,
        "env_steps": env_steps,
        "decisions": decisions,
        "charts/steps_per_s": new_steps / wall_s,
        "charts/decisions_per_s": new_decisions / wall_s,
        "charts/episodes": len(episodes),
        "charts/episodic_return": mean("return"),
        "charts/episodic_return_median": float(np.median(column["return"])) if some else nan,
        "charts/episodic_length": mean("length"),
        "charts/episodic_sim_steps": mean("sim_steps"),
        "charts/episodic_task_return": mean("task_return"),
        "charts/integrator_failures": int(column["integrator_failure"].sum()),
        "charts/fall_rate": mean("fell"),
        "charts/distance": float(np.nanmean(column["distance"]))
        if some and not np.isnan(column["distance"]).all()
        else nan,
        **{name: losses.get(key, nan) for name, key in (loss_columns or {}).items()},
        "time/iteration_s": wall_s,
        "time/simulate_s": simulate,
        "time/communicate_s": max(wall_s - simulate - learn_s, 0.0),
        "time/learn_s": learn_s,
        # over each simulator's own cycle (waiting, storing, simulating: its wait is for the previous update, so
        # the learner's wall time of this iteration is not its denominator; that gave > 100 % when they differed)
        "time/simulator_wait_fraction": wait / max(wait + store + simulate, 1e-9),
        "time/store_s": store,
        **{
            f"reward/{name}": float(sum(r.term_sums[i] for r in rollouts)) / max(new_decisions, 1)
            for i, name in enumerate(reward_terms)
        },
    }


def prepare_run_dir(config: TrainConfig, metadata: dict) -> Path:
    """Create the run directory and save the resolved config in it, with the run's metadata (versions, git
    commit, hosts, Slurm job) under "metadata" (global rank 0 only)."""
    run_dir = Path(config.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**config.to_dict(), "metadata": metadata}, indent=2, sort_keys=True)
    (run_dir / "config.json").write_text(text + "\n")
    return run_dir


def describe_start(start: Start, policy: Policy) -> str:
    """One line on what a new run starts from."""
    source = start.source
    where = f"{source['path']} (iteration {source['iteration']})"
    if start.how == "blend":
        spec = policy.spec()
        return f"blending: frozen {describe_spec(spec['frozen'])} from {where} + new {describe_spec(spec['student'])}"
    if start.how == "clone":
        return f"behavioural cloning of {where} into {describe_spec(policy.spec())}, then training"
    return f"starting from {where}"


def world_description(layout: lmpi.RankLayout) -> str:
    """e.g. '1 learner + 2 simulator ranks'."""
    sims = layout.world_size - layout.learners
    learners = f"{layout.learners} learner{'s' if layout.learners > 1 else ''}"
    return f"{learners} + {sims} simulator rank{'s' if sims > 1 else ''}"


def approximate_mirror(config: TrainConfig, mirrors: bool) -> bool:
    """Whether a run that mirrors (`mirrors`: the algorithm's word) does so on difficulty-2 states whose weakened
    muscles are not mirror images of each other."""
    weakening = config.env.kwargs.get("weakening", "graders-2017")
    return mirrors and config.env.id == ENV_ID and config.env.difficulty == 2 and weakening != "psoas"
