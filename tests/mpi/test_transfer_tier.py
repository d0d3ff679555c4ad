"""Blending, cloning and evaluation as collectives: run by tests/test_mpi_tier.py under `mpiexec -n 1, 2, 3`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from mpi4py import MPI

from lrun.api import Agent
from lrun.checkpoint import load_checkpoint
from lrun.env.factory import env_factory
from lrun.evaluate import EvalSettings, episode_seed, eval_env_config, evaluate, run_episode
from lrun.store.recorder import env_facts
from lrun.training import train

from .tier import tiny_config as config

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()


def test_blend_and_clone_train_on_every_world_size(shared_dir):
    source = f"{shared_dir}/source"
    # a big learning rate moves the source's means away from the new networks' (near 0), so there is something
    # to imitate
    source_config = config(source, **{"policy.hidden_sizes": "[8]", "ppo.learning_rate": "0.02"})
    train(source_config, comm=world, stream=io.StringIO())
    blend = f"{shared_dir}/blend"
    train(
        config(blend, **{"blend.source": source, "blend.ramp_iterations": "2"}),
        comm=world,
        stream=io.StringIO(),
    )
    clone = f"{shared_dir}/clone"
    clone_config = config(clone, **{"clone.teacher": source, "clone.epochs": "20", "clone.minibatch_size": "16"})
    train(clone_config, comm=world, stream=io.StringIO())
    world.Barrier()
    if rank == 0:
        trained, blended = load_checkpoint(source), load_checkpoint(blend)
        for name, tensor in trained["policy"].items():
            torch.testing.assert_close(blended["policy"][f"frozen.{name}"], tensor, rtol=0, atol=0)
        assert float(blended["policy"]["coefficient"]) == 0.5  # iteration 1 of a 2-iteration ramp
        with open(Path(clone) / "clone.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert float(rows[-1]["holdout_kl"]) < 0.5 * float(rows[0]["holdout_kl"]), rows


def trained_runner(shared_dir: str) -> str:
    """A one-iteration Run-v0 policy (collective)."""
    run_dir = f"{shared_dir}/runner"
    overrides = {"env.id": "lrun/Run-v0", "env.physics": "fast", "policy.hidden_sizes": "[8]", "run.iterations": "1"}
    train(config(run_dir, **overrides), comm=world, stream=io.StringIO())
    return run_dir


@pytest.mark.parametrize("deterministic", [True, False])
def test_eval_episodes_do_not_depend_on_the_world_size(shared_dir, deterministic):
    run_dir = trained_runner(shared_dir)
    settings = EvalSettings(
        episodes=4,
        difficulty=2,
        obstacles=10,
        seed=3,
        physics="fast",
        deterministic=deterministic,
        out=f"{shared_dir}/eval",
    )
    result = evaluate(run_dir, settings, comm=world, stream=io.StringIO())
    if rank != 0:
        return
    # every episode again, one after another in this one process, in reverse order
    agent = Agent.load(run_dir)  # the public API acts as lrun eval does
    env = env_factory(eval_env_config(agent.config.to_dict()["env"], settings))()
    facts = env_facts(env)
    for k in reversed(range(settings.episodes)):
        row = run_episode(env, agent, episode_seed(3, k), k, deterministic, None, facts, 1)
        np.testing.assert_array_equal(result["table"][k], row)
