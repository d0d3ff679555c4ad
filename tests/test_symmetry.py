"""Feature maps and the left/right mirror: pure maps, the real skeleton's symmetry, PPO batch augmentation, and a
whole training run + `lrun eval` with pelvis-relative features, mirrored batches and frame skip."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from helpers import LRUN, MPIEXEC, run, sets

from lrun.api import load_policy
from lrun.checkpoint import load_checkpoint
from lrun.env.features import (
    FEATURES,
    PELVIS_X,
    TASK_NAMES,
    action_mirror,
    feature_size,
    features,
    observation_mirror,
    point,
)
from lrun.learn.policy import ActorCritic
from lrun.learn.ppo import Batch
from lrun.learn.symmetry import Mirror, asymmetry, mirror_normalised, mirrored_batch, symmetry_loss
from lrun.store.reader import RunStore

ABSOLUTE_X = [PELVIS_X, 18, *(point(name)[0] for name in ("head", "pelvis", "torso", "toes_l", "toes_r"))]
ABSOLUTE_X += [point("talus_l")[0], point("talus_r")[0]]


@pytest.mark.parametrize("name", list(FEATURES))
def test_mirror_is_an_involution_that_moves_only_the_legs(name):
    p = observation_mirror(name)
    assert sorted(p) == list(range(feature_size(name, 41)))
    assert np.array_equal(p[p], np.arange(len(p)))
    moved = np.flatnonzero(p != np.arange(len(p)))
    assert len(moved) == 22  # 6 joint angles, 6 joint speeds, (x, y) of both toes and tali, 2 psoas strengths
    q = action_mirror()
    assert np.array_equal(q[q], np.arange(18)) and np.array_equal(q[:9], np.arange(9, 18))


def test_observation_names_agree_with_the_index_constants_and_the_mirror():
    """The store's labels of the 41 observations: unique, and the mirror swaps exactly _l and _r names."""
    assert len(TASK_NAMES) == len(set(TASK_NAMES)) == 41
    assert TASK_NAMES[PELVIS_X] == "pelvis_tx" and TASK_NAMES[point("talus_r")[1]] == "talus_r_y"

    def swapped(name: str) -> str:
        return re.sub(r"_([lr])(?=_|$)", lambda m: "_r" if m.group(1) == "l" else "_l", name)

    p = observation_mirror("task")
    assert [TASK_NAMES[j] for j in p] == [swapped(name) for name in TASK_NAMES]


def test_relative_features_do_not_grow_with_distance():
    obs = np.random.default_rng(0).normal(size=(5, 41))
    shifted = obs.copy()
    shifted[:, ABSOLUTE_X] += 7.5  # the same pose 7.5 m further on
    np.testing.assert_allclose(features("relative-v1", shifted), features("relative-v1", obs), atol=1e-12)
    assert features("relative-v1", obs).shape == (5, 38)
    assert not np.allclose(features("task", shifted), features("task", obs))


def test_mirrored_excitations_give_the_mirrored_motion_on_the_real_skeleton():
    """The model is left/right symmetric: mirrored excitations from the (symmetric) initial pose produce the
    mirrored observations, which is what makes mirrored samples valid PPO data."""
    from lrun.env.run_env import RunEnv

    right, left = RunEnv(physics="reference"), RunEnv(physics="reference")
    obs_r, _ = right.reset(seed=1)
    obs_l, _ = left.reset(seed=1)
    p, q = observation_mirror("task"), action_mirror()
    rng = np.random.default_rng(0)
    for _ in range(30):
        excitation = rng.uniform(0.0, 1.0, 18)
        obs_r, *_ = right.step(excitation)
        obs_l, *_ = left.step(excitation[q])
    assert np.abs(obs_r[p] - obs_r).max() > 0.05  # the legs really are in different places
    np.testing.assert_allclose(obs_r[p], obs_l, atol=1e-8)  # a left-leg state is the right-leg state mirrored
    # the feature map commutes with the mirror
    pf = observation_mirror("relative-v1")
    np.testing.assert_allclose(features("relative-v1", obs_r)[pf], features("relative-v1", obs_l), atol=1e-8)


def test_mirrored_batch_appends_the_mirror_image_with_old_log_probs():
    torch.manual_seed(0)
    policy = ActorCritic(38, 18, [16])
    rng = np.random.default_rng(1)
    mean, std = rng.normal(size=38), rng.uniform(0.5, 2.0, 38)
    obs = torch.as_tensor(rng.normal(size=(10, 38)), dtype=torch.float32)
    with torch.no_grad():
        dist = policy.distribution(obs)
        actions = dist.sample()
        batch = Batch(obs, actions, dist.log_prob(actions), torch.arange(10.0), torch.ones(10), policy.value(obs))
    p, q = observation_mirror("relative-v1"), action_mirror()
    doubled = mirrored_batch(batch, policy, Mirror(p, q, mean, std))
    assert len(doubled) == 20
    assert torch.equal(doubled.obs[:10], obs) and torch.equal(doubled.logprobs[:10], batch.logprobs)
    # the mirrored observations are the mirrored raw observations, normalised with the same statistics
    raw = obs.double().numpy() * std + mean
    np.testing.assert_allclose(doubled.obs[10:].numpy(), ((raw[:, p] - mean) / std), atol=1e-5)
    np.testing.assert_allclose(mirror_normalised(doubled.obs[10:], p, mean, std).numpy(), obs.numpy(), atol=1e-5)
    assert torch.equal(doubled.actions[10:], actions[:, q])
    with torch.no_grad():
        expected = policy.distribution(doubled.obs[10:]).log_prob(actions[:, q])
    assert torch.allclose(doubled.logprobs[10:], expected)
    assert torch.equal(doubled.advantages[10:], batch.advantages) and torch.equal(doubled.returns[10:], batch.returns)


def symmetric_states(n: int, mean: np.ndarray, std: np.ndarray, p: np.ndarray, rng) -> torch.Tensor:
    """Normalised observations of states that are their own mirror image (both legs alike)."""
    raw = rng.normal(size=(n, len(p)))
    raw = (raw + raw[:, p]) / 2
    return torch.as_tensor((raw - mean) / std, dtype=torch.float32)


def test_symmetric_states_are_kept_out_of_the_mirrored_samples():
    torch.manual_seed(0)
    policy = ActorCritic(38, 18, [16])
    rng = np.random.default_rng(2)
    p, q = observation_mirror("relative-v1"), action_mirror()
    mean, std = rng.normal(size=38), rng.uniform(0.5, 2.0, 38)
    mean = (mean + mean[p]) / 2  # statistics of mirrored data are symmetric, so a symmetric state maps onto itself
    std = (std + std[p]) / 2
    symmetric = symmetric_states(4, mean, std, p, rng)
    asymmetric = torch.as_tensor(rng.normal(size=(6, 38)), dtype=torch.float32)
    obs = torch.cat([symmetric, asymmetric])
    mirror = Mirror(p, q, mean, std, min_asymmetry=0.25)
    scores = asymmetry(obs, mirror_normalised(obs, p, mean, std))
    assert torch.all(scores[:4] < 1e-5) and torch.all(scores[4:] > 0.25)
    with torch.no_grad():
        dist = policy.distribution(obs)
        actions = dist.sample()
        batch = Batch(obs, actions, dist.log_prob(actions), torch.arange(10.0), torch.ones(10), policy.value(obs))
    augmented = mirrored_batch(batch, policy, mirror)
    assert len(augmented) == 16  # all 10, plus the mirror images of the 6 asymmetric ones
    assert torch.equal(augmented.advantages[10:], batch.advantages[4:])
    assert torch.equal(augmented.actions[10:], actions[4:, q])


def test_symmetry_loss_is_zero_for_a_symmetric_policy_and_pulls_an_asymmetric_one_towards_it():
    rng = np.random.default_rng(3)
    p, q = observation_mirror("relative-v1"), action_mirror()
    mean, std = np.zeros(38), np.ones(38)
    mirror = Mirror(p, q, mean, std)
    obs = torch.as_tensor(rng.normal(size=(64, 38)), dtype=torch.float32)

    class Symmetric(ActorCritic):
        """Right leg's excitations from the state, left leg's from the mirrored state: exactly symmetric."""

        def distribution_parameters(self, x):
            right = self.actor(x)[:, :9]
            left = self.actor(x[:, torch.as_tensor(p)])[:, :9]
            return torch.cat([right, left, self.log_std.expand(len(x), 18)], dim=-1)

    torch.manual_seed(0)
    assert symmetry_loss(Symmetric(38, 18, [16]), obs, mirror).item() < 1e-10
    torch.manual_seed(0)
    policy = ActorCritic(38, 18, [16])
    with torch.no_grad():
        policy.actor[-1].weight.mul_(100.0)  # a clearly asymmetric policy
    before = symmetry_loss(policy, obs, mirror).item()
    optimiser = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(50):
        optimiser.zero_grad()
        symmetry_loss(policy, obs, mirror).backward()
        optimiser.step()
    assert before > 0.1 and symmetry_loss(policy, obs, mirror).item() < 0.1 * before
    # states that are their own mirror image are left out when asked: the loss is 0 on them
    states = symmetric_states(8, mean, std, p, rng)
    assert symmetry_loss(policy, states, Mirror(p, q, mean, std, min_asymmetry=0.25)).item() == 0.0


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_training_with_features_mirror_and_frame_skip_then_eval(tmp_path):
    run_dir = tmp_path / "run"
    settings = sets(
        "env.physics=fast",
        "env.frame_skip=2",
        "layout.envs_per_rank=2",
        "ppo.steps_per_env=12",
        "ppo.minibatches=2",
        "ppo.epochs=2",
        "policy.features=relative-v1",
        "ppo.mirror=true",
        "reward.weights={progress = 1.0, alive = 1.0, head_ahead = 1.0}",
        "run.iterations=2",
        f"run.run_dir={run_dir}",
    )
    result = run([MPIEXEC, "-n", "2", LRUN, "train", *settings])
    assert result.returncode == 0, result.stderr
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["meta"]["obs_size"] == 38
    # budgets count simulated env steps; no episode ends within 48 steps here, so each decision is 2 steps
    assert checkpoint["decisions"] == 2 * 2 * 12 and checkpoint["env_steps"] == 2 * checkpoint["decisions"]
    rows = (run_dir / "progress.csv").read_text().splitlines()
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(",")))
    assert int(last["env_steps"]) == 96 and int(last["decisions"]) == 48
    with RunStore(run_dir) as store:
        assert store.files[0]["steps/obs"].shape[1] == 41  # the store keeps the task's observations

    out = tmp_path / "eval"
    result = run([LRUN, "eval", str(run_dir), "--episodes", "1", "--physics", "fast", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "eval.json").read_text())
    assert np.isfinite(summary["summary"]["mean_distance_m"])
    # the policy's inputs recomputed from the stored observations reproduce every stored excitation
    policy, normaliser, _ = load_policy(run_dir)
    with RunStore(out) as store:
        steps = store.steps(["obs", "excitations"])
        row = store.episodes()
    x = normaliser.normalise(features("relative-v1", steps["obs"]), clip=False)
    with torch.no_grad():
        raw = policy.mode(torch.as_tensor(x)).numpy()
    expected = policy.env_action(raw, np.zeros(18), np.ones(18)).astype(np.float32)
    np.testing.assert_allclose(steps["excitations"], expected, atol=1e-6)
    assert int(row["sim_steps"][0]) <= 2 * int(row["length"][0])


def test_a_parent_with_other_features_or_frame_skip_is_refused(tmp_path):
    """A child run (init, blend, clone) must see and act like its parent: one line saying which --set fits."""
    parent = tmp_path / "parent"
    tiny = sets("env.physics=fast", "layout.envs_per_rank=1", "ppo.steps_per_env=8", "ppo.minibatches=2")
    tiny += sets("ppo.epochs=1", "policy.hidden_sizes=[8]", "run.iterations=1")
    made = run(
        [LRUN, "train", *tiny, *sets("policy.features=relative-v1", "env.frame_skip=2", f"run.run_dir={parent}")]
    )
    assert made.returncode == 0, made.stderr
    for extra, hint in (
        (sets("env.frame_skip=2"), "--set policy.features=relative-v1"),
        (sets("policy.features=relative-v1"), "--set env.frame_skip=2"),
    ):
        child = run([LRUN, "train", *tiny, *extra, *sets(f"run.init_from={parent}", f"run.run_dir={tmp_path / 'c'}")])
        assert child.returncode == 2 and hint in child.stderr, child.stderr
        assert len(child.stderr.strip().splitlines()) == 1
