"""`lrun train`: the iteration loop (PPO or SAC) for every rank role (serial, learner, simulator).

One iteration, as every rank sees it:

1. global rank 0 broadcasts [iteration, stop flag, policy parameters, normaliser state] (the iteration number
   is the policy version);
2. each simulator collects `steps_per_env` steps of each of its envs and sends the rollout to its learner as one
   float32 buffer;
3. all ranks Allreduce the raw-observation moments [sum, sum of squares, count] and fold them into the
   normaliser;
4. the learners run PPO, averaging gradients over the learner communicator (one Allreduce per minibatch);
5. rank 0 logs, and checkpoints every `checkpoint_every` iterations and at the end.

A world of size 1 runs all roles in one process (serial mode) with the same maths and no MPI traffic.

`run_learner` reads as those steps (collect, update, tally, log) over a rollout source chosen once (`LocalRollouts` in
serial mode, `RemoteRollouts` on a learner with simulators); `run_simulator`, the simulator's side, follows them so
that the matching order of the collectives can be checked at a glance. How a run starts is resolved before any
of this, in `lrun.startup`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from lrun import __version__
from lrun import mpi as lmpi
from lrun.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    describe_spec,
    save_checkpoint,
    write_failure,
)
from lrun.config import ConfigError, TrainConfig
from lrun.env.factory import env_factory
from lrun.env.features import action_mirror, features, observation_mirror
from lrun.env.vector import SerialVectorEnv
from lrun.learn.blend import BlendedPolicy, blend_coefficient, build_from_spec
from lrun.learn.clone import CloneSettings, clone_policy
from lrun.learn.gae import compute_gae
from lrun.learn.normaliser import RunningNormaliser
from lrun.learn.policy import ActorCritic, Policy, count_trainable, flat_parameters, load_flat_parameters
from lrun.learn.ppo import Batch, PPOSettings, PPOUpdater
from lrun.learn.sac import SACSettings, SACUpdater
from lrun.learn.symmetry import Mirror, asymmetry, mirrored_batch, symmetry_loss
from lrun.learn.transfer import zero_input_columns
from lrun.logger import ProgressLogger
from lrun.memory import RssLog
from lrun.metadata import flat_attributes, run_metadata
from lrun.rollout import EPISODE_COLUMNS, Rollout, RolloutCollector
from lrun.startup import Problem, Start, StartupError, initial_policy, startup_checks
from lrun.store.reader import RunStore, StoreError, rank_files, write_master
from lrun.store.recorder import EpisodeBook, env_facts, trajectory_attributes
from lrun.store.replay import ReplayFile, ReplayFileError, load_replay, replay_path
from lrun.store.writer import TrajectoryWriter, cut_back

#: A learner's MPI operations, logged per iteration as time/mpi_<operation>_s (lrun bench scaling reads them):
#: the decision-and-policy broadcast, waiting for each simulator's rollout (mostly its simulating), the rollouts'
#: transfer, the observation-moments Allreduce, and the gradient Allreduces among learners.
LEARNER_MPI = ("bcast", "recv_wait", "recv_transfer", "allreduce", "gradient_allreduce")

#: Rank 0's decision before each iteration, broadcast with the policy: go on, done, or stopped by a signal.
STOP_NONE, STOP_DONE, STOP_SIGNAL = 0, 1, 2
#: Signals that ask a run to stop early (Slurm: `--signal=B:USR1@120` forwarded by the job script, `scancel`'s
#: SIGTERM, Ctrl-C's SIGINT under mpiexec): rank 0 finishes the iteration, checkpoints, and all ranks exit.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def train(config: TrainConfig, resume: str | None = None, comm: Any = None, stream: TextIO | None = None) -> dict:
    """Run `lrun train` on this rank. Collective over `comm` (default: MPI world; None-world = serial).

    Returns the last logged scalars on global rank 0 (an empty dict elsewhere).
    """
    stream = stream or sys.stdout
    torch.set_num_threads(1)  # one core per rank: simulators and learners share the node
    if comm is None:
        comm = lmpi.comm_world()
    try:
        start = startup_checks(config, resume, comm.Get_size())
    except (ConfigError, lmpi.LayoutError, CheckpointError, StoreError, ValueError, OSError) as exc:
        raise StartupError(str(exc)) from exc
    if start.payload is not None and int(start.payload["iteration"]) >= config.run.iterations:
        if comm.Get_rank() == 0:  # every rank found the same and returns: no MPI traffic, no file touched
            print(
                f"lrun train: {resume} already has {int(start.payload['iteration'])} iterations "
                f"(run.iterations = {config.run.iterations}): nothing to do; raise run.iterations to train on",
                file=stream,
                flush=True,
            )
        return {"nothing_to_do": True}
    layout = lmpi.split_roles(comm, config.layout.learners)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    hosts = lmpi.gather_objects(comm, socket.gethostname()) if comm.Get_size() > 1 else [socket.gethostname()]
    metadata = run_metadata(hosts if comm.Get_rank() == 0 else None)
    rank = RankContext(lmpi.Waiter(config.run.wait_sleep), RssLog(), StopRequest(), metadata)
    rank.stop.install(comm.Get_rank() == 0)
    try:
        if layout.role == "simulator":
            stop = run_simulator(config, start, comm, layout, rank)
            result: dict = {"stopped_early": stop == STOP_SIGNAL}
        else:
            result = run_learner(config, start, comm, layout, stream, rank)
    finally:
        # also on an exception: the host process (a curriculum, a test) keeps its own handlers, and the next
        # stage splits the world again
        rank.stop.restore()
        if layout.learner_comm is not None:
            layout.learner_comm.Free()
    write_rank_stats(config, layout, time.perf_counter() - wall0, time.process_time() - cpu0, rank)
    return result


@dataclass
class RankContext:
    """What one rank's run owns besides the training state, made afresh by every `train` call (a curriculum
    runs several in one process): how it waits for MPI and how long it did, its memory samples, and the stop
    request a signal leaves."""

    waiter: lmpi.Waiter
    rss: RssLog
    stop: StopRequest
    metadata: dict  # lrun.metadata.run_metadata: on global rank 0 with every rank's host, elsewhere its own


class StopRequest:
    """Rank 0 records a stop signal here; other ranks ignore the signal and wait for rank 0's decision."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict = {}

    def _record(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def install(self, is_root: bool) -> None:
        """Take over the stop signals (not from a thread: signals are then the host's business)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record if is_root else signal.SIG_IGN)

    def restore(self) -> None:
        """Put back the handlers `install` replaced."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def run_learner(
    config: TrainConfig, start: Start, comm: Any, layout: lmpi.RankLayout, stream: TextIO, rank: RankContext
) -> dict:
    """A learner rank (or the whole run in serial mode): collect, update, log, until rank 0 says stop."""
    state = learner_state(config, start, layout, rank.waiter)
    state.metadata = rank.metadata
    reporter = Reporter(config, start, state, layout, stream) if layout.is_root else None
    if start.how == "clone":
        clone_from_store(config, state, start.source, stream if layout.is_root else None)
    rollout_source = (
        LocalRollouts(config, start.problem, state)
        if layout.role == "serial"
        else RemoteRollouts(config, start.problem, comm, layout, rank.waiter)
    )
    first_iteration = state.iteration
    last: dict = {"stopped_early": False}
    try:
        while True:
            stop = STOP_DONE if state.iteration >= config.run.iterations else STOP_NONE
            if stop == STOP_NONE and reporter is not None and rank.stop.signal is not None:
                stop = reporter.stop_for_signal(state, rank.stop.signal, first_iteration)
            t0 = time.perf_counter()
            mpi_before = dict(rank.waiter.by_operation)
            coefficient = schedule_blend(state.policy, config, state.iteration)
            stop = rollout_source.share_decision(state, stop)  # rank 0's decision, with the policy
            if stop:
                last["stopped_early"] = stop == STOP_SIGNAL
                if stop == STOP_SIGNAL:  # rank 0 has checkpointed: every learner keeps its buffer with it
                    sync_replay_file(state)
                break
            rollouts, moments = rollout_source.collect(state.iteration)
            losses, learn_s = update(config, state, layout, rollouts, moments)
            state.iteration += 1
            new_steps, new_decisions, rollouts = tally(config, state, layout, rollouts)
            rank.rss.sample(state.iteration)
            if reporter is not None:
                wall_s = time.perf_counter() - t0
                mpi_s = {op: rank.waiter.by_operation.get(op, 0.0) - mpi_before.get(op, 0.0) for op in LEARNER_MPI}
                last = reporter.log(
                    state, wall_s, new_steps, new_decisions, learn_s, rollouts, losses, coefficient, mpi_s
                )
            if checkpoint_due(config, state.iteration):
                sync_replay_file(state)
    finally:
        rollout_source.close()
        if reporter is not None:
            reporter.close()
    rollout_source.finish()
    if reporter is not None:
        reporter.finish()
    return last


def learner_state(
    config: TrainConfig, start: Start, layout: lmpi.RankLayout, waiter: lmpi.Waiter | None = None
) -> TrainingState:
    """The policy, normaliser, optimiser and counters of a learner: new, resumed or from a parent."""
    learner_comm = layout.learner_comm
    reduce = None
    if learner_comm is not None and learner_comm.Get_size() > 1:
        reduce = partial(lmpi.allreduce_mean, learner_comm)
        if waiter is not None:
            reduce = waiter.timed("gradient_allreduce", reduce)
    state = TrainingState(config, start, 0 if learner_comm is None else learner_comm.Get_rank(), reduce)
    if start.payload is not None:
        state.restore(start.payload)
    elif start.source is not None:
        state.start_from(start.source, start.how)
    state.session_start = state.iteration
    if config.run.algorithm == "sac" and config.sac.save_buffer:
        attach_replay_file(config, state, start, learner_comm, waiter)
    return state


def attach_replay_file(
    config: TrainConfig, state: TrainingState, start: Start, learner_comm: Any, waiter: lmpi.Waiter | None
) -> None:
    """Give a SAC learner its buffer's file beside the run's checkpoints and, on --resume, refill the buffer from
    the file the resumed checkpoint's directory holds. The warm-up (`sac.learning_starts`) counts the collected
    decisions every learner got back, summed over the learners, so all of them start updating together."""
    index = 0 if learner_comm is None else learner_comm.Get_rank()
    updater: SACUpdater = state.updater
    state.replay_file = ReplayFile(replay_path(checkpoint_dir(config.run.run_dir), index), updater.buffer)
    restored = None
    if start.resume_path is not None:
        source = replay_path(start.resume_path.parent, index)
        if not source.is_file():
            state.replay_note = (
                f"replay buffer: no {source.name} beside the checkpoint: it refills ({config.sac.learning_starts} "
                f"decisions before the first update)"
            )
        else:
            try:
                restored = load_replay(source, updater.buffer)
            except ReplayFileError as exc:
                state.replay_note = f"replay buffer: {exc}; it refills"
    if restored is not None:
        if restored.exact and restored.path.resolve() == state.replay_file.path.resolve():
            state.replay_file.mark_synced()
        ahead = restored.iteration - state.iteration
        state.replay_note = (
            f"replay buffer: {restored.transitions} transitions back from {restored.path} (written at iteration "
            f"{restored.iteration}"
            + (f", {ahead} iterations after this checkpoint's: their transitions are kept" if ahead > 0 else "")
            + ")"
            + (f"; {restored.dropped} rows an interrupted write left were dropped" if restored.dropped else "")
        )
    # the warm-up goes on from what every learner got back (its buffer holds its share of the decisions)
    restored_decisions = np.array([float(restored.collected if restored is not None else 0)])
    if learner_comm is not None and learner_comm.Get_size() > 1:
        lmpi.allreduce_sum(learner_comm, restored_decisions, waiter or lmpi.Waiter(config.run.wait_sleep))
    state.restored_decisions = int(restored_decisions[0])


def sync_replay_file(state: TrainingState) -> None:
    """Write the slots the learner's buffer filled since its file's last sync (after each checkpoint and at a
    stop signal); a failure is an error that names the cure, and the checkpoint stays intact."""
    if state.replay_file is None:
        return
    try:
        state.replay_file.sync(state.iteration)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"{state.replay_file.path}: cannot write the replay buffer at iteration {state.iteration} "
            f"({write_failure(exc)}); the checkpoint is intact: free space (or move the file away) and --resume, "
            f"or set sac.save_buffer = false (a resumed run then refills its buffer)"
        ) from exc


class LocalRollouts:
    """Serial mode: this process steps the envs itself (no MPI)."""

    def __init__(self, config: TrainConfig, problem: Problem, state: TrainingState) -> None:
        self.collector, self.writer = make_collector(
            config, problem, state.policy, state.normaliser, 0, state.iteration, 0, state.metadata
        )
        self.steps = config.ppo.steps_per_env
        self.stored = 0.0

    def share_decision(self, state: TrainingState, stop: int) -> int:
        """Nobody to tell: the decision stands."""
        return stop

    def collect(self, iteration: int) -> tuple[list[Rollout], np.ndarray]:
        """One rollout of every env, stored; and its observation moments."""
        self.collector.policy_version = iteration
        rollout, moments = self.collector.collect(self.steps)
        rollout.store_s = self.stored
        self.stored = store_rollout(self.collector, self.writer)
        return [rollout], moments

    def close(self) -> None:
        """Close the rank file."""
        if self.writer is not None:
            self.writer.close()

    def finish(self) -> None:
        """Nothing to agree on."""


class RemoteRollouts:
    """A learner's simulator ranks. Its collectives pair with `run_simulator`'s, in the same order: Bcast of the
    decision and policy; one rollout received from each simulator; Allreduce of the observation moments; at the
    end, one Allreduce once every rank file is closed."""

    def __init__(
        self, config: TrainConfig, problem: Problem, comm: Any, layout: lmpi.RankLayout, waiter: lmpi.Waiter
    ) -> None:
        self.config, self.problem, self.comm, self.layout, self.waiter = config, problem, comm, layout, waiter

    def share_decision(self, state: TrainingState, stop: int) -> int:
        """Broadcast [iteration, stop, parameters, normaliser]; returns global rank 0's stop decision."""
        message = state.message(stop)
        lmpi.bcast(self.comm, message, 0, self.waiter)
        return int(message[1])

    def collect(self, iteration: int) -> tuple[list[Rollout], np.ndarray]:
        """This learner's simulators' rollouts, and the observation moments summed over every rank."""
        p = self.problem
        rollouts = [
            Rollout.unpack(
                lmpi.recv_any_size(self.comm, source, lmpi.ROLLOUT_TAG, self.waiter),
                self.config.ppo.steps_per_env,
                self.config.layout.envs_per_rank,
                p.obs_size,
                p.act_size,
                len(p.reward_terms),
            )
            for source in self.layout.simulator_ranks
        ]
        moments = np.zeros(2 * p.obs_size + 1)
        lmpi.allreduce_sum(self.comm, moments, self.waiter)
        return rollouts, moments

    def close(self) -> None:
        """The simulators own the rank files."""

    def finish(self) -> None:
        """Wait until every simulator has closed its rank file (rank 0 then writes the master file)."""
        lmpi.allreduce_sum(self.comm, np.zeros(1), self.waiter)


def update(
    config: TrainConfig, state: TrainingState, layout: lmpi.RankLayout, rollouts: list[Rollout], moments: np.ndarray
) -> tuple[dict[str, float], float]:
    """Fold the new observation moments into the normaliser and learn from the rollouts: PPO (mirrored, or with
    the symmetry loss, where the config asks) or SAC; returns the losses and the seconds the update took."""
    if config.policy.normalise_observations:  # the statistics the rollouts were normalised with
        state.policy.set_input_statistics(state.normaliser.mean, state.normaliser.var)
    collected_with = (state.normaliser.mean.copy(), np.sqrt(state.normaliser.var + state.normaliser.epsilon))
    state.normaliser.update_from_moments(moments)
    t_learn = time.perf_counter()
    if config.run.algorithm == "sac":
        if config.policy.normalise_observations:  # SAC normalises its buffer with the statistics as they are now
            state.policy.set_input_statistics(state.normaliser.mean, state.normaliser.var)
        losses = sac_update(config, state, layout, rollouts, collected_with)
        losses["learning_rate"] = config.sac.learning_rate
        return losses, time.perf_counter() - t_learn
    lr = learning_rate(config, state.iteration)
    state.updater.set_learning_rate(lr)
    batch = rollouts_to_batch(rollouts, config.ppo.gamma, config.ppo.gae_lambda, config.ppo.reward_scale)
    n_collected = len(batch)
    symmetric = config.ppo.mirror or config.ppo.symmetry_loss > 0
    mirror = mirror_map(config, state.problem, collected_with) if symmetric else None
    if config.ppo.mirror:
        batch = mirrored_batch(batch, state.policy, mirror)
    if config.ppo.symmetry_loss > 0:
        state.updater.extra_loss = partial(weighted_symmetry_loss, state.policy, mirror, config.ppo.symmetry_loss)
    losses = state.updater.update(batch)
    losses["mirrored_fraction"] = len(batch) / n_collected - 1.0
    losses["learning_rate"] = lr
    log_std = getattr(state.policy, "log_std", None)
    if log_std is not None:  # the Gaussian's state-independent std, in [-1, 1] action units
        losses["policy_std"] = float(log_std.detach().exp().mean())
    return losses, time.perf_counter() - t_learn


def sac_update(
    config: TrainConfig,
    state: TrainingState,
    layout: lmpi.RankLayout,
    rollouts: list[Rollout],
    collected_with: tuple[np.ndarray, np.ndarray],
) -> dict[str, float]:
    """Store the rollouts' transitions (and their mirror images, where asked) in the replay buffer, then take
    `sac.updates_per_step` gradient steps per new decision once `sac.learning_starts` decisions are in.

    Every learner takes the same number of steps (computed from the config and the layout, not from what it
    received), so their gradient Allreduces pair up."""
    updater: SACUpdater = state.updater
    mirror = mirror_map(config, state.problem, collected_with) if config.sac.mirror else None
    for k, r in enumerate(rollouts):  # SAC's rollouts carry features before normalisation, as the buffer keeps them
        transitions = updater.stitcher.transitions(k, r.obs, r.actions, r.rewards, r.terminated, r.truncated)
        updater.buffer.add(*transitions)
        if mirror is not None:
            obs, actions, rewards, next_obs, terminated = transitions
            p, q = mirror.obs_perm, mirror.act_perm
            # the mirror image normalised as a state of its own (permuting normalised values would mix the
            # statistics of the left and right slots)
            here = torch.as_tensor(normalised_features(config, state, obs))
            there = torch.as_tensor(normalised_features(config, state, obs[:, p]))
            keep = asymmetry(here, there).numpy() >= config.sac.mirror_min_asymmetry
            updater.buffer.add(
                obs[keep][:, p], actions[keep][:, q], rewards[keep], next_obs[keep][:, p], terminated[keep], False
            )
    simulators = max(layout.world_size - layout.learners, 1)
    per_iteration = config.ppo.steps_per_env * config.layout.envs_per_rank
    # this session's decisions and those the learners' buffers came back with: a resumed run without its buffer
    # refills it before learning (the same count on every learner, so their gradient Allreduces pair up)
    collected = per_iteration * simulators * (state.iteration + 1 - state.session_start) + state.restored_decisions
    if collected < config.sac.learning_starts:
        return {"updates": 0.0, "replay_transitions": float(updater.buffer.size)}
    n_updates = round(config.sac.updates_per_step * per_iteration * max(simulators // layout.learners, 1))
    losses = updater.update(n_updates, partial(normalised_features, config, state))
    losses["replay_transitions"] = float(updater.buffer.size)
    return losses


def approximate_mirror(config: TrainConfig) -> bool:
    """Whether the run mirrors difficulty-2 states whose weakened muscles are not mirror images of each other."""
    mirrors = config.ppo.mirror or config.ppo.symmetry_loss > 0 or config.sac.mirror
    weakening = config.env.kwargs.get("weakening", "graders-2017")
    return mirrors and config.env.id == "lrun/Run-v0" and config.env.difficulty == 2 and weakening != "psoas"


def synced_state(state: TrainingState) -> np.ndarray:
    """What every learner must hold identically: the policy's parameters and, for SAC, the critics, their
    targets and the temperature."""
    flat = flat_parameters(state.policy).astype(np.float64)
    if isinstance(state.updater, SACUpdater):
        flat = np.concatenate([flat, state.updater.sync_vector()])
    return flat


def normalised_features(config: TrainConfig, state: TrainingState, features: np.ndarray) -> np.ndarray:
    """Features as the networks take them: normalised with the run's current statistics (unclipped: the
    networks clip their own inputs)."""
    if not config.policy.normalise_observations:
        return features.astype(np.float32)
    return state.normaliser.normalise(features, clip=False)


def tally(
    config: TrainConfig, state: TrainingState, layout: lmpi.RankLayout, rollouts: list[Rollout]
) -> tuple[int, int, list[Rollout]]:
    """This iteration's simulated steps and decisions, over every learner's simulators (gathered to the first
    learner, with the episodes for its log), added to rank 0's counters; every `sync_check_every` iterations the
    learners check they still hold identical parameters."""
    new_steps = sum(r.n_sim_steps for r in rollouts)
    new_decisions = sum(r.n_steps for r in rollouts)
    learner_comm = layout.learner_comm
    if learner_comm is not None and learner_comm.Get_size() > 1:
        gathered = lmpi.gather_objects(learner_comm, (new_steps, new_decisions, [r.summary() for r in rollouts]))
        if learner_comm.Get_rank() == 0:
            new_steps = sum(g[0] for g in gathered)
            new_decisions = sum(g[1] for g in gathered)
            rollouts = [r for g in gathered for r in g[2]]
        if state.iteration % config.run.sync_check_every == 0 and not lmpi.check_synced(
            learner_comm, synced_state(state)
        ):
            raise RuntimeError(f"learners' parameters diverged at iteration {state.iteration}")
    if layout.is_root:
        state.env_steps += new_steps
        state.decisions += new_decisions
    return new_steps, new_decisions, rollouts


class Reporter:
    """Global rank 0's side of a run: the run directory and its start-up lines, the per-iteration log, the
    checkpoints and the store's master file."""

    def __init__(
        self, config: TrainConfig, start: Start, state: TrainingState, layout: lmpi.RankLayout, stream: TextIO
    ) -> None:
        self.config, self.state, self.stream = config, state, stream
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
        if approximate_mirror(config):
            self.say(
                "note: mirroring at difficulty 2 with the graders' muscle weakening is an approximation: the two "
                "strengths weaken glut_max_l and iliopsoas_r, which are not mirror images (env.kwargs weakening = "
                "'psoas' makes the mirror exact)"
            )
        if state.replay_note:
            self.say(state.replay_note)

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
    """Whether rank 0 checkpoints (and every SAC learner syncs its buffer's file) after this iteration."""
    return iteration % config.run.checkpoint_every == 0 or iteration == config.run.iterations


def run_simulator(config: TrainConfig, start: Start, comm: Any, layout: lmpi.RankLayout, rank: RankContext) -> int:
    """A simulator rank: receive the policy, collect, send, until told to stop."""
    waiter = rank.waiter
    problem = start.problem
    start_iteration = int(start.payload["iteration"]) if start.payload else 0
    policy = initial_policy(config, start)
    # every simulator explores with its own noise (the policy was built from the shared seed)
    torch.manual_seed(
        int(np.random.SeedSequence([config.run.seed, layout.simulator_index, start_iteration, 1]).generate_state(1)[0])
    )
    normaliser = RunningNormaliser(problem.obs_size)
    message = np.empty(message_size(policy, problem.obs_size))
    lmpi.bcast(comm, message, 0, waiter)  # rank 0 has cut the store back (on resume) before this first broadcast
    collector, writer = make_collector(
        config, problem, policy, normaliser, layout.simulator_index, start_iteration, layout.world_rank, rank.metadata
    )
    waited = stored = 0.0
    try:
        while True:
            iteration, stop = load_message(message, policy, normaliser)
            if stop:
                break
            schedule_blend(policy, config, iteration)
            collector.policy_version = iteration
            rollout, moments = collector.collect(config.ppo.steps_per_env)
            rollout.wait_s, rollout.store_s = waited, stored
            waited = lmpi.send(comm, rollout.pack(), layout.learner_rank, lmpi.ROLLOUT_TAG, waiter)
            stored = store_rollout(collector, writer)  # while the learners update
            rank.rss.sample(iteration + 1)
            waited += lmpi.allreduce_sum(comm, moments, waiter)
            waited += lmpi.bcast(comm, message, 0, waiter)
    finally:
        if writer is not None:
            writer.close()
    lmpi.allreduce_sum(comm, np.zeros(1), waiter)  # tell rank 0 the rank file is closed
    return stop


class TrainingState:
    """What a learner owns and a checkpoint holds."""

    def __init__(self, config: TrainConfig, start: Start, learner_index: int, reduce_gradients: Any = None) -> None:
        self.config = config
        self.problem = problem = start.problem
        self.policy = initial_policy(config, start)
        self.learner_index = learner_index
        self.normaliser = RunningNormaliser(problem.obs_size)
        self.sample_seed = seed = config.run.seed * 1000 + learner_index
        self.updater: PPOUpdater | SACUpdater
        if config.run.algorithm == "sac":
            # critics from the run seed, identical on every learner (they train one pair by averaged gradients);
            # minibatches from the learner's own seed
            self.updater = SACUpdater(
                self.policy,
                sac_settings(config),
                reduce_gradients,
                config.run.seed * 1000,
                config.sac.buffer_size,
                sample_seed=seed,
            )
        else:
            self.updater = PPOUpdater(self.policy, ppo_settings(config), reduce_gradients, seed=seed)
        self.iteration = 0
        self.env_steps = 0  # simulated env steps (0.01 s each in RunEnv): budgets are counted in these
        self.decisions = 0  # agent steps: env_steps / frame_skip
        self.lineage: list[dict[str, Any]] = []  # the checkpoints this run descends from (curriculum stages)
        self.metadata: dict[str, Any] = {}  # versions, git commit, hosts, Slurm job (lrun.metadata)
        self.session_start = 0  # the iteration this process started (or resumed) at
        self.replay_file: ReplayFile | None = None  # SAC with sac.save_buffer: the buffer's file
        self.restored_decisions = 0  # collected decisions the learners' buffers came back with, over all learners
        self.replay_note = ""  # how the buffer started, for rank 0's log
        self.transfer_note = ""  # what a transfer from a parent carried over, for rank 0's log

    def payload(self) -> dict[str, Any]:
        """Checkpoint contents (tensors and plain data only: loadable with weights_only=True)."""
        p = self.config.policy
        return {
            "meta": {
                "obs_size": self.problem.obs_size,
                "act_size": self.problem.act_size,
                "hidden_sizes": list(p.hidden_sizes),
                "distribution": p.distribution,
                "policy_spec": self.policy.spec(),
                "lrun_version": __version__,
            },
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "decisions": self.decisions,
            "policy": self.policy.state_dict(),
            "optimizer": self.updater.state_dict(),
            "normaliser": torch.from_numpy(self.normaliser.state_vector()),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(self.updater.rng.bit_generator.state),
            "config": self.config.to_dict(),
            "lineage": self.lineage,
            "metadata": self.metadata,
        }

    def restore(self, payload: dict[str, Any]) -> None:
        """Load a checkpoint payload (already checked for fit)."""
        self.policy.load_state_dict(payload["policy"])
        self.updater.load_state_dict(payload["optimizer"])
        self.normaliser.load_state_vector(payload["normaliser"].numpy())
        torch.set_rng_state(payload["torch_rng"])
        self.updater.rng.bit_generator.state = json.loads(payload["numpy_rng"])
        if self.learner_index > 0 and isinstance(self.updater, SACUpdater):
            # the checkpoint holds learner 0's generator: the others draw from their own, so their minibatch
            # indices differ again after a resume (deterministically: from their seed and the iteration)
            rng = np.random.default_rng([self.sample_seed, int(payload["iteration"])])
            self.updater.buffer.rng = self.updater.rng = rng
        self.iteration = int(payload["iteration"])
        self.env_steps = int(payload["env_steps"])
        self.decisions = int(payload.get("decisions", self.env_steps))
        self.lineage = list(payload.get("lineage", []))

    def start_from(self, parent: dict[str, Any], how: str) -> None:
        """Begin a new run from a trained policy's normaliser (its weights are in the policy already, or are
        imitated next) and record it in the lineage; fresh optimiser and counters.

        Features the parent never saw vary (obstacles and muscle strengths, for a walker from flat ground) start
        their statistics afresh, and a network carried over as it is gets zero weight from them, so it acts as
        the parent did until it learns to use them (`lrun.learn.transfer`). A SAC run starts from a SAC
        parent's critics and temperature (copied, or widened into bigger critics), not from random critics that
        would hand the actor random gradients while they learn."""
        self.normaliser.load_state_vector(parent["normaliser"].numpy())
        new_inputs = self.normaliser.forget_constant()
        notes = []
        if new_inputs.any():
            notes.append(f"{int(new_inputs.sum())} features the parent never saw vary start their statistics afresh")
        if how in ("init", "clone") and isinstance(self.policy, ActorCritic):  # a clone acts alone from the start
            zero_input_columns(self.policy.actor, new_inputs)
            zero_input_columns(self.policy.critic, new_inputs)
        parent_optimizer = parent.get("optimizer") or {}
        if isinstance(self.updater, SACUpdater):
            if "critic" in parent_optimizer:
                try:
                    how_critics = self.updater.start_from(parent_optimizer, new_inputs)
                    notes.append(f"critics and temperature {how_critics} from the parent")
                except ValueError as exc:
                    notes.append(f"critics learnt afresh: the parent's do not fit ({exc})")
            else:
                notes.append("critics learnt afresh (the parent is not a SAC run)")
        self.transfer_note = "; ".join(notes)
        self.lineage = [
            *parent.get("lineage", []),
            {
                "checkpoint": parent["path"],
                "iteration": parent["iteration"],
                "run_dir": parent["config"]["run"]["run_dir"],
                "how": how,
            },
        ]

    def message(self, stop: int) -> np.ndarray:
        """The broadcast: [iteration, stop code, parameters, normaliser state] as float64."""
        return np.concatenate(
            [
                [float(self.iteration), float(stop)],
                flat_parameters(self.policy).astype(np.float64),
                self.normaliser.state_vector(),
            ]
        )


def message_size(policy: Policy, obs_size: int) -> int:
    """Length of the broadcast message (a blend's frozen network never travels: every rank loads it)."""
    return 2 + count_trainable(policy) + RunningNormaliser.state_size(obs_size)


def load_message(message: np.ndarray, policy: Policy, normaliser: RunningNormaliser) -> tuple[int, int]:
    """Apply a broadcast message to a simulator's policy copy; returns (iteration, stop code)."""
    n_params = count_trainable(policy)
    load_flat_parameters(policy, message[2 : 2 + n_params].astype(np.float32))
    normaliser.load_state_vector(message[2 + n_params :])
    return int(message[0]), int(message[1])


def make_collector(
    config: TrainConfig,
    problem: Problem,
    policy: Policy,
    normaliser: RunningNormaliser,
    simulator_index: int,
    start_iteration: int,
    world_rank: int,
    metadata: dict,
) -> tuple[RolloutCollector, TrajectoryWriter | None]:
    """A simulator's envs and, if the run stores trajectories, its rank file (opened for appending, with the
    run's metadata among its attributes).

    Episode seeds derive from (run seed, simulator, start iteration), so a resumed run never repeats them.
    """
    factory = env_factory(config.env, config.reward)
    seed = int(np.random.SeedSequence([config.run.seed, simulator_index, start_iteration]).generate_state(1)[0])
    vec = SerialVectorEnv([factory] * config.layout.envs_per_rank, seed=seed)
    writer = book = None
    if config.run.store_trajectories:
        facts = env_facts(vec.envs[0])
        attrs = trajectory_attributes(
            config.to_json(),
            config.env.id,
            world_rank,
            simulator_index,
            weakening=facts["weakening"],
            **flat_attributes(metadata),
        )
        path = Path(config.run.run_dir) / "trajectories" / f"rank-{world_rank:04d}.h5"
        writer = TrajectoryWriter(
            path,
            problem.task_obs_size,
            problem.act_size,
            facts["max_obstacles"],
            facts["reward_terms"],
            attrs,
            facts["labels"],
        )
        book = EpisodeBook(
            vec.num_envs,
            simulator_index,
            problem.task_obs_size,
            facts,
            first_row=writer.n_steps,
            first_counter=writer.next_episode_counter(simulator_index),
        )
    collector = RolloutCollector(
        vec,
        policy,
        normaliser,
        config.policy.normalise_observations,
        problem.distance_index,
        book,
        problem.feature_map,
        send_features=config.run.algorithm == "sac",
    )
    return collector, writer


def store_rollout(collector: RolloutCollector, writer: TrajectoryWriter | None) -> float:
    """Append the last collected steps and finished episodes to the rank file and flush; returns seconds."""
    if writer is None:
        return 0.0
    start = time.perf_counter()
    try:
        writer.append_steps(collector.last_record, collector.last_terms)
        writer.append_episodes(collector.book.take_finished())
        writer.flush()
    except (OSError, RuntimeError) as exc:  # h5py reports a full disk either way
        raise StoreError(
            f"{writer.path}: cannot store this iteration's steps ({write_failure(exc)}); rows up to the last "
            f"checkpoint are kept: free space, then --resume"
        ) from exc
    return time.perf_counter() - start


def schedule_blend(policy: Policy, config: TrainConfig, iteration: int) -> float | None:
    """Set a blend's coefficient for this (0-based) iteration; returns it, or None for a plain policy."""
    if not isinstance(policy, BlendedPolicy) or not config.blend.source:
        return None
    c = blend_coefficient(iteration, config.blend.start, config.blend.end, config.blend.ramp_iterations)
    policy.set_coefficient(c, config.blend.distill_coef)
    return c


def ppo_settings(config: TrainConfig) -> PPOSettings:
    """The subset of the config the PPO update needs."""
    return PPOSettings(**{f.name: getattr(config.ppo, f.name) for f in fields(PPOSettings)})


def sac_settings(config: TrainConfig) -> SACSettings:
    """The subset of the config the SAC update needs."""
    names = [f.name for f in fields(SACSettings)]
    return SACSettings(**{name: getattr(config.sac, name) for name in names})


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """The scheduled learning rate at this iteration (0-based)."""
    if config.ppo.lr_schedule == "linear":
        return config.ppo.learning_rate * (1.0 - iteration / config.run.iterations)
    return config.ppo.learning_rate


def rollouts_to_batch(rollouts: list[Rollout], gamma: float, lam: float, reward_scale: float = 1.0) -> Batch:
    """GAE per rollout, then one flat batch over all of a learner's simulators."""
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("obs", "actions", "logprobs", "advantages", "returns", "values")
    }
    for r in rollouts:
        advantages, returns = compute_gae(
            r.rewards * reward_scale, r.values, r.terminated, r.truncated, r.final_values, r.next_value, gamma, lam
        )
        parts["obs"].append(r.obs.reshape(-1, r.obs.shape[-1]))
        parts["actions"].append(r.actions.reshape(-1, r.actions.shape[-1]))
        parts["logprobs"].append(r.logprobs.reshape(-1))
        parts["advantages"].append(advantages.reshape(-1))
        parts["returns"].append(returns.reshape(-1))
        parts["values"].append(r.values.reshape(-1))
    return Batch.from_numpy(**{k: np.concatenate(v) for k, v in parts.items()})


def mirror_map(config: TrainConfig, problem: Problem, statistics: tuple[np.ndarray, ...]) -> Mirror:
    """The left/right mirror of this run's features, for observations normalised with these statistics
    (identity statistics when observations are not normalised)."""
    mean, std = statistics
    if not config.policy.normalise_observations:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    perm = observation_mirror(problem.feature_map)
    return Mirror(perm, action_mirror(problem.act_size), mean, std, config.ppo.mirror_min_asymmetry)


def weighted_symmetry_loss(policy: Policy, mirror: Mirror, weight: float, obs: torch.Tensor) -> torch.Tensor:
    """`weight` x the symmetry loss on a minibatch (PPOUpdater.extra_loss)."""
    return weight * symmetry_loss(policy, obs, mirror)


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
) -> dict[str, float]:
    """The scalars logged per iteration (CleanRL-style names); `reward/<term>` is a term's mean per decision.

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
        "losses/policy_loss": losses.get("pg_loss", nan),
        "losses/value_loss": losses.get("v_loss", nan),
        "losses/entropy": losses.get("entropy", nan),
        "losses/approx_kl": losses.get("approx_kl", nan),
        "losses/old_approx_kl": losses.get("old_approx_kl", nan),
        "charts/learning_rate": losses.get("learning_rate", nan),
        "charts/policy_std": losses.get("policy_std", nan),
        "losses/clipfrac": losses.get("clipfrac", nan),
        "losses/updates": losses.get("updates", nan),
        "losses/mirrored_fraction": losses.get("mirrored_fraction", nan),
        "losses/symmetry_loss": losses.get("extra_loss", nan),
        "losses/q_loss": losses.get("q_loss", nan),
        "losses/actor_loss": losses.get("actor_loss", nan),
        "losses/alpha": losses.get("alpha", nan),
        "losses/q_mean": losses.get("q_mean", nan),
        "losses/replay_transitions": losses.get("replay_transitions", nan),
        "losses/explained_variance": losses.get("explained_variance", nan),
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


def clone_from_store(config: TrainConfig, state: TrainingState, teacher_payload: dict, stream: TextIO | None) -> list:
    """The imitation phase of a cloned run: the new network learns the teacher's actions on stored states.

    Every learner does the same deterministic work, so they stay identical; global rank 0 reports progress and
    writes run_dir/clone.csv (epoch, train/held-out KL, value error).
    """
    c = config.clone
    store_dir = c.store or teacher_payload["config"]["run"]["run_dir"]
    teacher = build_from_spec(teacher_payload["meta"]["policy_spec"])
    teacher.load_state_dict(teacher_payload["policy"])
    normaliser = state.normaliser  # the teacher's, loaded by start_from
    with RunStore(store_dir) as store:
        raw = features(config.policy.features, store.recent_observations(c.max_states))
    if config.policy.normalise_observations:
        teacher.set_input_statistics(normaliser.mean, normaliser.var)
        obs = normaliser.normalise(raw, clip=False)
    else:
        obs = raw.astype(np.float32)
    if stream is not None:
        print(f"cloning on {len(obs)} stored states of {store_dir}", file=stream, flush=True)
    rows: list[dict[str, float]] = []

    def progress(row: dict[str, float]) -> None:
        rows.append(row)
        if stream is not None:
            print(
                f"  clone epoch {row['epoch']:3d}/{c.epochs}: KL train {row['train_kl']:.4f} "
                f"held-out {row['holdout_kl']:.4f}  value mse {row['holdout_value_mse']:.4f}",
                file=stream,
                flush=True,
            )

    # SAC's actor has a value head it never uses (its critics are the twin Q networks, carried over by
    # start_from): a SAC student does not learn it, and nobody learns it from a SAC teacher
    teacher_sac = teacher_payload["config"]["run"].get("algorithm", "ppo") == "sac"
    value_coef = 0.0 if config.run.algorithm == "sac" or teacher_sac else c.value_coef
    settings = CloneSettings(c.epochs, c.minibatch_size, c.learning_rate, value_coef, c.holdout_fraction)
    history = clone_policy(state.policy, teacher, obs, settings, seed=config.run.seed, progress=progress)
    if stream is not None:
        path = Path(config.run.run_dir) / "clone.csv"
        lines = [",".join(history[0])] + [",".join(f"{v:.6g}" for v in row.values()) for row in history]
        path.write_text("\n".join(lines) + "\n")
    return history


def write_rank_stats(
    config: TrainConfig, layout: lmpi.RankLayout, wall_s: float, cpu_s: float, rank: RankContext
) -> None:
    """Each rank's wall and CPU time, in total and while waiting, and its RSS per iteration, for this run only:
    run_dir/ranks/rank-NNNN.json."""
    directory = Path(config.run.run_dir) / "ranks"
    directory.mkdir(parents=True, exist_ok=True)
    stats = {
        "role": layout.role,
        "world_rank": layout.world_rank,
        "host": socket.gethostname(),  # the rank's own word on where it ran (a multi-node job's layout)
        "pid": os.getpid(),
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "wait_wall_s": rank.waiter.wall_s,
        "wait_cpu_s": rank.waiter.cpu_s,
        "rss_mb": rank.rss.samples,
    }
    (directory / f"rank-{layout.world_rank:04d}.json").write_text(json.dumps(stats, indent=1) + "\n")
