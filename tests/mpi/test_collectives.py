"""Collective tests: run by tests/test_mpi_tier.py under `mpiexec -n 1`, `-n 2` and `-n 3`.

Every rank runs the same tests in the same order, so the collectives inside them match up.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from lrun import mpi as lmpi
from lrun.checkpoint import load_checkpoint
from lrun.learn.policy import ActorCritic, flat_parameters
from lrun.learn.ppo import Batch, PPOSettings, PPOUpdater
from lrun.training import train

from .tier import tiny_config

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()


def test_split_roles_learners_first_simulators_round_robin():
    layout = lmpi.split_roles(world, learners=1)
    if size == 1:
        assert layout.role == "serial"
        return
    assert layout.role == ("learner" if rank == 0 else "simulator")
    if rank == 0:
        assert layout.simulator_ranks == list(range(1, size)) and layout.learner_comm.Get_size() == 1
    else:
        assert layout.learner_rank == 0 and layout.simulator_index == rank - 1


def test_polite_bcast_allreduce_and_any_size_receive():
    waiter = lmpi.Waiter(0.001)
    buffer = np.arange(5, dtype=np.float64) if rank == 0 else np.zeros(5)
    lmpi.bcast(world, buffer, 0, waiter)
    assert np.array_equal(buffer, np.arange(5))
    total = np.full(3, float(rank + 1))
    lmpi.allreduce_sum(world, total, waiter)
    assert np.array_equal(total, np.full(3, size * (size + 1) / 2))
    if rank == 0:
        for source in range(1, size):
            got = lmpi.recv_any_size(world, source, 5, waiter)
            assert np.array_equal(got, np.full(10 * source + 1, source, np.float32))
    else:
        lmpi.send(world, np.full(10 * rank + 1, rank, np.float32), 0, 5, waiter)
    # each operation's wall time is counted under its name (lrun bench scaling splits iterations by these)
    expected = {"bcast", "allreduce"} | ({"recv_wait", "recv_transfer"} if rank == 0 and size > 1 else set())
    expected |= {"send"} if rank > 0 else set()
    assert set(waiter.by_operation) == expected and all(t >= 0 for t in waiter.by_operation.values())
    assert waiter.wall_s >= waiter.by_operation["bcast"]
    reduce = waiter.timed("gradient_allreduce", lambda buffer: buffer.__imul__(2))
    doubled = np.ones(2)
    reduce(doubled)
    assert np.array_equal(doubled, [2, 2]) and waiter.by_operation["gradient_allreduce"] >= 0


def test_check_synced_detects_divergence():
    assert lmpi.check_synced(world, np.ones(4))
    assert lmpi.check_synced(world, np.full(4, float(rank))) == (size == 1)


def test_gradient_allreduce_keeps_learners_identical_on_different_data():
    torch.manual_seed(0)  # the same initial network everywhere
    policy = ActorCritic(3, 2, (8,))
    rng = np.random.default_rng(rank)  # but every rank has its own data
    obs = rng.normal(size=(64, 3)).astype(np.float32)
    actions, logprobs, values = policy.act(obs)
    adv = rng.normal(size=64)
    batch = Batch.from_numpy(
        obs=obs, actions=actions, logprobs=logprobs, advantages=adv, returns=values + adv, values=values
    )
    learner = PPOUpdater(
        policy,
        PPOSettings(learning_rate=1e-2, epochs=2, minibatches=4),
        lambda flat: lmpi.allreduce_mean(world, flat),
        seed=rank,
    )
    before = flat_parameters(policy)
    learner.update(batch)
    after = flat_parameters(policy)
    assert not np.array_equal(before, after)
    assert lmpi.check_synced(world, after)


def test_train_checkpoints_and_resume_continues_counters(shared_dir):
    out = io.StringIO()
    last = train(tiny_config(shared_dir), comm=world, stream=out)
    world.Barrier()
    steps_per_iteration = max(size - 1, 1) * 2 * 32
    if rank == 0:
        assert last["iteration"] == 2 and last["env_steps"] == 2 * steps_per_iteration
        assert ("serial mode" in out.getvalue()) == (size == 1)
        checkpoint = load_checkpoint(shared_dir)
        assert checkpoint["iteration"] == 2 and checkpoint["env_steps"] == 2 * steps_per_iteration
        assert json.loads((Path(shared_dir) / "config.json").read_text())["run"]["iterations"] == 2
    last = train(
        tiny_config(shared_dir, **{"run.iterations": "3"}), resume=shared_dir, comm=world, stream=io.StringIO()
    )
    world.Barrier()
    if rank == 0:
        assert last["iteration"] == 3 and last["env_steps"] == 3 * steps_per_iteration
        rows = (Path(shared_dir) / "progress.csv").read_text().splitlines()
        assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3]
