"""`lrun train` on every rank: `train` splits the world into learners and simulators and runs each rank's side;
`run_learner` reads as an iteration's steps (collect, update, tally, log) over a rollout source chosen once
(`lrun.training.engine`), with the algorithm (`ALGORITHMS`) behind one interface (`lrun.training.algorithm`):
learners run PPO or SAC, averaging gradients over the learner communicator (one Allreduce per gradient step).
Global rank 0 also logs and checkpoints (`lrun.training.report`). How a run starts is resolved before any of
this, in `lrun.startup`.
"""

from __future__ import annotations

import socket
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from lrun import mpi as lmpi
from lrun.checkpoint import CheckpointError
from lrun.config import ConfigError, TrainConfig
from lrun.env.features import episode_features
from lrun.learn.blend import build_from_spec
from lrun.learn.clone import CloneSettings, clone_policy
from lrun.learn.policy import flat_parameters
from lrun.memory import RssLog
from lrun.metadata import run_metadata
from lrun.rollout import Rollout
from lrun.startup import Start, StartupError, initial_policy, startup_checks
from lrun.store.reader import RunStore, StoreError
from lrun.training.algorithm import Algorithm
from lrun.training.engine import (
    LEARNER_MPI,
    STOP_DONE,
    STOP_NONE,
    STOP_SIGNAL,
    LocalRollouts,
    RankContext,
    RemoteRollouts,
    StopRequest,
    run_simulator,
    schedule_blend,
    write_rank_stats,
)
from lrun.training.ppo import PPO
from lrun.training.report import Reporter, checkpoint_due
from lrun.training.sac import SAC
from lrun.training.state import TrainingState, sample_seed

#: `run.algorithm` -> the algorithm it selects (config.py's RANGES accepts the same names)
ALGORITHMS: dict[str, type[Algorithm]] = {"ppo": PPO, "sac": SAC}


def train(config: TrainConfig, resume: str | None = None, comm: Any = None, stream: TextIO | None = None) -> dict:
    """Run `lrun train` on this rank. Collective over `comm` (default: MPI world; None-world = serial).

    Returns the last logged scalars on global rank 0 (an empty dict elsewhere).
    """
    stream = stream or sys.stdout
    torch.set_num_threads(1)  # one core per rank: simulators and learners share the node
    if comm is None:
        comm = lmpi.comm_world()
    algorithm = ALGORITHMS[config.run.algorithm](config)
    try:
        start = startup_checks(config, resume, comm.Get_size(), algorithm)
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
            stop = run_simulator(config, start, comm, layout, rank, algorithm.sends_features)
            result: dict = {"stopped_early": stop == STOP_SIGNAL}
        else:
            result = run_learner(config, start, comm, layout, stream, rank, algorithm)
    finally:
        # also on an exception: the host process (a curriculum, a test) keeps its own handlers, and the next
        # stage splits the world again
        rank.stop.restore()
        if layout.learner_comm is not None:
            layout.learner_comm.Free()
    write_rank_stats(config, layout, time.perf_counter() - wall0, time.process_time() - cpu0, rank)
    return result


def run_learner(
    config: TrainConfig,
    start: Start,
    comm: Any,
    layout: lmpi.RankLayout,
    stream: TextIO,
    rank: RankContext,
    algorithm: Algorithm,
) -> dict:
    """A learner rank (or the whole run in serial mode): collect, update, log, until rank 0 says stop."""
    state = learner_state(config, start, layout, algorithm, rank.waiter)
    state.metadata = rank.metadata
    reporter = Reporter(config, start, state, layout, stream, algorithm) if layout.is_root else None
    if start.how == "clone":
        clone_from_store(config, state, algorithm, start.source, stream if layout.is_root else None)
    rollout_source = (
        LocalRollouts(config, start.problem, state, algorithm.sends_features)
        if layout.role == "serial"
        else RemoteRollouts(config, start.problem, comm, layout, rank.waiter)
    )
    first_iteration = state.iteration
    last: dict = {"stopped_early": False}
    # overlapped (an off-policy learner with simulators of its own): the decision for the next iteration goes out
    # as soon as this one's rollouts are in, so the simulators collect while the learner updates, acting with the
    # policy one update behind
    overlap = algorithm.overlaps_collection() and layout.role != "serial"
    if not overlap or state.acting is None or len(state.acting) != len(flat_parameters(state.policy)):
        state.acting = None
    shared = None  # overlapped: the decision already broadcast for the coming iteration
    try:
        while True:
            t0 = time.perf_counter()
            mpi_before = dict(rank.waiter.by_operation)
            coefficient = schedule_blend(state.policy, config, state.iteration)
            if shared is None:
                stop = decide(config, state, state.iteration, reporter, rank, first_iteration)
                stop = rollout_source.share_decision(state, stop)  # rank 0's decision, with the policy
            else:
                stop = shared
            if stop:
                last["stopped_early"] = stop == STOP_SIGNAL
                if stop == STOP_SIGNAL:  # rank 0 has checkpointed: every learner keeps what goes beside it
                    algorithm.save(state)
                break
            rollouts, moments = rollout_source.collect(state.iteration)
            collected_with = fold_moments(config, state, moments)
            if overlap:
                # the signal's checkpoint waits for this iteration's update (decide(..., checkpoint=False))
                upcoming = decide(config, state, state.iteration + 1, None, rank, first_iteration)
                state.next_acting = flat_parameters(state.policy)
                shared = rollout_source.share_decision(state, upcoming, state.iteration + 1)
            losses, learn_s = learn(state, algorithm, rollouts, collected_with)
            losses["policy_lag"] = float(overlap)  # updates the acting policy was behind (logged where named)
            state.iteration += 1
            new_steps, new_decisions, rollouts = tally(config, state, layout, algorithm, rollouts)
            rank.rss.sample(state.iteration)
            if reporter is not None:
                wall_s = time.perf_counter() - t0
                mpi_s = {op: rank.waiter.by_operation.get(op, 0.0) - mpi_before.get(op, 0.0) for op in LEARNER_MPI}
                last = reporter.log(
                    state, wall_s, new_steps, new_decisions, learn_s, rollouts, losses, coefficient, mpi_s
                )
            if checkpoint_due(config, state.iteration):
                algorithm.save(state)
            if shared == STOP_SIGNAL and reporter is not None:
                reporter.stop_for_signal(state, rank.stop.signal or 0, first_iteration)
    finally:
        rollout_source.close()
        if reporter is not None:
            reporter.close()
    rollout_source.finish()
    if reporter is not None:
        reporter.finish()
    return last


def learner_state(
    config: TrainConfig,
    start: Start,
    layout: lmpi.RankLayout,
    algorithm: Algorithm,
    waiter: lmpi.Waiter | None = None,
) -> TrainingState:
    """The policy, normaliser, the algorithm's updater and the counters of a learner: new, resumed or from a
    parent; then the algorithm attaches to it (collective over the learners where it needs to be)."""
    learner_comm = layout.learner_comm
    reduce = None
    if learner_comm is not None and learner_comm.Get_size() > 1:
        reduce = partial(lmpi.allreduce_mean, learner_comm)
        if waiter is not None:
            reduce = waiter.timed("gradient_allreduce", reduce)
    index = 0 if learner_comm is None else learner_comm.Get_rank()
    policy = initial_policy(config, start)
    updater = algorithm.build_updater(policy, reduce, sample_seed(config, index))
    state = TrainingState(config, start.problem, policy, updater, index)
    if start.payload is not None:
        state.restore(start.payload)
        algorithm.restored(state, start.payload)
    elif start.source is not None:
        new_inputs, notes = state.start_from(start.source, start.how)
        notes += algorithm.start_from(state, start.source, new_inputs)
        state.transfer_note = "; ".join(notes)
    state.session_start = state.iteration
    algorithm.attach(state, start, layout, waiter)
    return state


def decide(
    config: TrainConfig,
    state: TrainingState,
    iteration: int,
    reporter: Reporter | None,
    rank: RankContext,
    first_iteration: int,
) -> int:
    """Rank 0's decision before `iteration`: go on, done (the run has its iterations) or stop for a signal
    (checkpointing first where `reporter` is given; an overlapped learner checkpoints after its update instead)."""
    if iteration >= config.run.iterations:
        return STOP_DONE
    if rank.stop.signal is None:  # only global rank 0 records signals: the others' decision is its broadcast
        return STOP_NONE
    return reporter.stop_for_signal(state, rank.stop.signal, first_iteration) if reporter is not None else STOP_SIGNAL


def fold_moments(config: TrainConfig, state: TrainingState, moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold the iteration's observation moments into the normaliser; returns the (mean, std) the rollouts were
    normalised with, for the algorithm."""
    if config.policy.normalise_observations:  # the statistics the rollouts were normalised with
        state.policy.set_input_statistics(state.normaliser.mean, state.normaliser.var)
    collected_with = (state.normaliser.mean.copy(), np.sqrt(state.normaliser.var + state.normaliser.epsilon))
    state.normaliser.update_from_moments(moments)
    return collected_with


def learn(
    state: TrainingState,
    algorithm: Algorithm,
    rollouts: list[Rollout],
    collected_with: tuple[np.ndarray, np.ndarray],
) -> tuple[dict[str, float], float]:
    """Let the algorithm learn from the rollouts; returns its losses and the seconds it took."""
    t_learn = time.perf_counter()
    losses = algorithm.learn(state, rollouts, collected_with)
    return losses, time.perf_counter() - t_learn


def synced_state(state: TrainingState, algorithm: Algorithm) -> np.ndarray:
    """What every learner must hold identically: the policy's parameters and what the algorithm adds (SAC: the
    critics, their targets and the temperature)."""
    flat = flat_parameters(state.policy).astype(np.float64)
    extra = algorithm.synced(state)
    return np.concatenate([flat, extra]) if len(extra) else flat


def tally(
    config: TrainConfig, state: TrainingState, layout: lmpi.RankLayout, algorithm: Algorithm, rollouts: list[Rollout]
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
            learner_comm, synced_state(state, algorithm)
        ):
            raise RuntimeError(f"learners' parameters diverged at iteration {state.iteration}")
    if layout.is_root:
        state.env_steps += new_steps
        state.decisions += new_decisions
    return new_steps, new_decisions, rollouts


def clone_from_store(
    config: TrainConfig, state: TrainingState, algorithm: Algorithm, teacher_payload: dict, stream: TextIO | None
) -> list:
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
        raw = episode_features(config.policy.features, *store.recent_steps(c.max_states))
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

    # a value head is learnt only where both algorithms learn one (SAC's actor has a value head it never uses:
    # its critics are the twin Q networks, carried over by start_from)
    teacher_algorithm = ALGORITHMS[teacher_payload["config"]["run"].get("algorithm", "ppo")]
    learns_value = algorithm.learns_value_head and teacher_algorithm.learns_value_head
    value_coef = c.value_coef if learns_value else 0.0
    settings = CloneSettings(c.epochs, c.minibatch_size, c.learning_rate, value_coef, c.holdout_fraction)
    history = clone_policy(state.policy, teacher, obs, settings, seed=config.run.seed, progress=progress)
    if stream is not None:
        path = Path(config.run.run_dir) / "clone.csv"
        lines = [",".join(history[0])] + [",".join(f"{v:.6g}" for v in row.values()) for row in history]
        path.write_text("\n".join(lines) + "\n")
    return history
