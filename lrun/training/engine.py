"""The rollout transport: both sides of every message of an iteration, the stop protocol, and what each rank owns
besides the training state. It knows no algorithm: the algorithm only says whether simulators send observation
features before normalisation (`send_features`).

One iteration, as every rank sees it:

1. global rank 0 broadcasts [iteration, stop flag, policy parameters, normaliser state] (the iteration number
   is the policy version; `decision_message` / `load_message`);
2. each simulator collects `layout.steps_per_env` steps of each of its envs and sends the rollout to its learner
   as one float32 buffer (`Rollout.pack`);
3. all ranks Allreduce the raw-observation moments [sum, sum of squares, count];
4. the learners learn (`lrun.training.loop`), global rank 0 logs and checkpoints.

A learner's rollouts come from a source chosen once: `LocalRollouts` in serial mode (a world of size 1 runs every
role in one process), `RemoteRollouts` on a learner with simulators. `run_simulator` is the simulator's side,
written to follow `RemoteRollouts` so that the matching order of the collectives can be checked at a glance.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lrun import mpi as lmpi
from lrun.checkpoint import write_failure
from lrun.config import TrainConfig
from lrun.env.factory import env_factory
from lrun.env.vector import SerialVectorEnv
from lrun.learn.blend import BlendedPolicy, blend_coefficient
from lrun.learn.normaliser import RunningNormaliser
from lrun.learn.policy import Policy, count_trainable, flat_parameters, load_flat_parameters
from lrun.memory import RssLog
from lrun.metadata import flat_attributes
from lrun.rollout import Rollout, RolloutCollector
from lrun.startup import Problem, Start, initial_policy
from lrun.store.reader import StoreError
from lrun.store.recorder import EpisodeBook, env_facts, trajectory_attributes
from lrun.store.writer import TrajectoryWriter
from lrun.training.state import TrainingState

#: A learner's MPI operations, logged per iteration as time/mpi_<operation>_s (lrun bench scaling reads them):
#: the decision-and-policy broadcast, waiting for each simulator's rollout (mostly its simulating), the rollouts'
#: transfer, the observation-moments Allreduce, and the gradient Allreduces among learners.
LEARNER_MPI = ("bcast", "recv_wait", "recv_transfer", "allreduce", "gradient_allreduce")

#: Rank 0's decision before each iteration, broadcast with the policy: go on, done, or stopped by a signal.
STOP_NONE, STOP_DONE, STOP_SIGNAL = 0, 1, 2
#: Signals that ask a run to stop early (Slurm: `--signal=B:USR1@120` forwarded by the job script, `scancel`'s
#: SIGTERM, Ctrl-C's SIGINT under mpiexec): rank 0 finishes the iteration, checkpoints, and all ranks exit.
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


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


@dataclass
class RankContext:
    """What one rank's run owns besides the training state, made afresh by every `train` call (a curriculum
    runs several in one process): how it waits for MPI and how long it did, its memory samples, and the stop
    request a signal leaves."""

    waiter: lmpi.Waiter
    rss: RssLog
    stop: StopRequest
    metadata: dict  # lrun.metadata.run_metadata: on global rank 0 with every rank's host, elsewhere its own


def decision_message(
    iteration: int, stop: int, policy: Policy, normaliser: RunningNormaliser, parameters: np.ndarray | None = None
) -> np.ndarray:
    """The broadcast: [iteration, stop code, parameters, normaliser state] as float64 (`parameters`: others than
    the policy's own, e.g. the acting ones a resumed overlapped run recorded)."""
    flat = flat_parameters(policy) if parameters is None else parameters
    return np.concatenate([[float(iteration), float(stop)], flat.astype(np.float64), normaliser.state_vector()])


def message_size(policy: Policy, obs_size: int) -> int:
    """Length of the broadcast message (a blend's frozen network never travels: every rank loads it)."""
    return 2 + count_trainable(policy) + RunningNormaliser.state_size(obs_size)


def load_message(message: np.ndarray, policy: Policy, normaliser: RunningNormaliser) -> tuple[int, int]:
    """Apply a broadcast message to a simulator's policy copy; returns (iteration, stop code)."""
    n_params = count_trainable(policy)
    load_flat_parameters(policy, message[2 : 2 + n_params].astype(np.float32))
    normaliser.load_state_vector(message[2 + n_params :])
    return int(message[0]), int(message[1])


class LocalRollouts:
    """Serial mode: this process steps the envs itself (no MPI)."""

    def __init__(self, config: TrainConfig, problem: Problem, state: TrainingState, send_features: bool) -> None:
        self.collector, self.writer = make_collector(
            config, problem, state.policy, state.normaliser, 0, state.iteration, 0, state.metadata, send_features
        )
        self.steps = config.layout.steps_per_env
        self.stored = 0.0

    def share_decision(self, state: TrainingState, stop: int, iteration: int | None = None) -> int:
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

    def share_decision(self, state: TrainingState, stop: int, iteration: int | None = None) -> int:
        """Broadcast [iteration, stop, parameters, normaliser] for `iteration` (default: the state's); returns
        global rank 0's stop decision. The parameters are the policy's, or, once after an overlapped run's
        resume, those its simulators were acting with (`TrainingState.acting`)."""
        iteration = state.iteration if iteration is None else iteration
        message = decision_message(iteration, stop, state.policy, state.normaliser, state.acting)
        state.acting = None
        lmpi.bcast(self.comm, message, 0, self.waiter)
        return int(message[1])

    def collect(self, iteration: int) -> tuple[list[Rollout], np.ndarray]:
        """This learner's simulators' rollouts, and the observation moments summed over every rank."""
        p = self.problem
        rollouts = [
            Rollout.unpack(
                lmpi.recv_any_size(self.comm, source, lmpi.ROLLOUT_TAG, self.waiter),
                self.config.layout.steps_per_env,
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


def run_simulator(
    config: TrainConfig, start: Start, comm: Any, layout: lmpi.RankLayout, rank: RankContext, send_features: bool
) -> int:
    """A simulator rank: receive the policy, collect, send, until told to stop; returns the stop code."""
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
        config,
        problem,
        policy,
        normaliser,
        layout.simulator_index,
        start_iteration,
        layout.world_rank,
        rank.metadata,
        send_features,
    )
    waited = stored = 0.0
    try:
        while True:
            iteration, stop = load_message(message, policy, normaliser)
            if stop:
                break
            schedule_blend(policy, config, iteration)
            collector.policy_version = iteration
            rollout, moments = collector.collect(config.layout.steps_per_env)
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


def make_collector(
    config: TrainConfig,
    problem: Problem,
    policy: Policy,
    normaliser: RunningNormaliser,
    simulator_index: int,
    start_iteration: int,
    world_rank: int,
    metadata: dict,
    send_features: bool,
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
        send_features=send_features,
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
