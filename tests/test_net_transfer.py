"""Carrying trained networks into a new stage (maths only, no OpenSim, no MPI): the normaliser's constant
features, function-preserving widening and input cuts, and SAC's blend and critic transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrun.learn.blend import BlendedPolicy, new_blend
from lrun.learn.normaliser import RunningNormaliser
from lrun.learn.policy import ActorCritic, mlp
from lrun.learn.sac import SACSettings, SACUpdater
from lrun.learn.transfer import carry_mlp, widen_mlp, zero_input_columns

OBS, ACT = 6, 4


def walker_statistics(rng: np.random.Generator, n: int = 500) -> tuple[RunningNormaliser, np.ndarray]:
    """A normaliser fed like a walker's: the last two features always 100 and 1 (no obstacle, full strength)."""
    data = rng.normal(size=(n, OBS))
    data[:, -2], data[:, -1] = 100.0, 1.0
    normaliser = RunningNormaliser(OBS)
    normaliser.update(data)
    return normaliser, data


def test_a_feature_that_never_varied_normalises_to_zero_whatever_it_becomes():
    normaliser, data = walker_statistics(np.random.default_rng(0))
    assert normaliser.constant_features().tolist() == [False] * 4 + [True, True]
    new = data[:3].copy()
    new[:, -2], new[:, -1] = 3.0, 0.9  # an obstacle 3 m ahead, a weakened muscle: 1e6 std away from the mean
    x = normaliser.normalise(new, clip=False)
    assert np.all(x[:, -2:] == 0.0)
    np.testing.assert_allclose(x[:, :4], normaliser.normalise(data[:3], clip=False)[:, :4])


def test_forgetting_constant_features_restarts_their_statistics_and_keeps_the_others():
    rng = np.random.default_rng(1)
    normaliser, _ = walker_statistics(rng)
    kept_mean, kept_count = normaliser.mean[:4].copy(), normaliser.counts[:4].copy()
    forgotten = normaliser.forget_constant()
    assert forgotten.tolist() == [False] * 4 + [True, True]
    assert np.all(normaliser.normalise(np.full((1, OBS), 7.0))[0, -2:] == 0.0)  # still 0 until data arrives
    stage = rng.normal(size=(200, OBS))
    stage[:, -2] = rng.uniform(0.0, 5.0, 200)
    normaliser.update(stage)
    # the new features' statistics are the new stage's alone; the others merged as before
    assert normaliser.mean[-2] == pytest.approx(stage[:, -2].mean()) and normaliser.counts[-2] == 200
    assert normaliser.var[-2] == pytest.approx(stage[:, -2].var())
    assert np.all(normaliser.counts[:4] == kept_count + 200) and not np.allclose(normaliser.mean[:4], kept_mean)
    assert normaliser.count == 700


def test_an_older_state_vector_with_one_count_still_loads():
    normaliser, _ = walker_statistics(np.random.default_rng(2))
    old = np.concatenate([normaliser.mean, normaliser.var, [normaliser.count]])
    loaded = RunningNormaliser(OBS)
    loaded.load_state_vector(old)
    assert np.array_equal(loaded.state_vector(), normaliser.state_vector())


def test_widening_an_mlp_keeps_its_function_and_the_new_units_learn():
    torch.manual_seed(0)
    small, wide = mlp([OBS, 8, 8, 2], "tanh", 1.0), mlp([OBS, 16, 24, 2], "tanh", 1.0)
    x = torch.randn(50, OBS)
    widen_mlp(small.state_dict(), wide)
    torch.testing.assert_close(wide(x), small(x), rtol=0, atol=1e-6)
    wide(x).square().sum().backward()
    assert wide[4].weight.grad[:, 8:].abs().sum() > 0  # new units reach the output and get gradient at once
    with pytest.raises(ValueError, match="does not widen"):
        widen_mlp(wide.state_dict(), mlp([OBS, 8, 8, 2], "tanh", 1.0))
    with pytest.raises(ValueError, match="2-layer"):
        widen_mlp(mlp([OBS, 8, 2], "tanh", 1.0).state_dict(), wide)
    other = mlp([OBS, 16, 4, 2], "tanh", 1.0)  # the second layer is narrower: refused before anything is written
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="layer 1"):
        widen_mlp(small.state_dict(), other)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())
    same = mlp([OBS, 8, 8, 2], "tanh", 1.0)
    assert carry_mlp(small.state_dict(), same) == "copied" and carry_mlp(small.state_dict(), wide) == "widened"


def test_cut_inputs_leave_the_function_unchanged_where_they_were_zero():
    torch.manual_seed(1)
    net = mlp([OBS, 8, 2], "tanh", 1.0)
    x = torch.randn(20, OBS)
    x[:, -2:] = 0.0
    before = net(x)
    assert zero_input_columns(net, np.array([False] * 4 + [True, True])) == 2
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)
    x[:, -2:] = 5.0
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)  # and they no longer reach it


def sac_source() -> tuple[SACUpdater, ActorCritic]:
    torch.manual_seed(3)
    actor = ActorCritic(OBS, ACT, (8,), "tanh", "squashed")
    updater = SACUpdater(actor, SACSettings(hidden_sizes=(8, 8), batch_size=16), seed=3, buffer_size=100)
    with torch.no_grad():
        updater.log_alpha.fill_(-3.0)
    return updater, actor


def test_a_sac_run_starts_from_its_parents_critics_and_temperature():
    parent, _ = sac_source()
    obs, act = torch.randn(10, OBS), torch.rand(10, ACT) * 2 - 1
    obs[:, -1] = 0.0
    for sizes, how in (((8, 8), "copied"), ((16, 16), "widened")):
        child = SACUpdater(ActorCritic(OBS, ACT, (8,), "tanh", "squashed"), SACSettings(hidden_sizes=sizes), seed=9)
        new_inputs = np.array([False] * (OBS - 1) + [True])
        assert child.start_from(parent.state_dict(), new_inputs) == how
        for mine, theirs in ((child.critic, parent.critic), (child.target, parent.target)):
            torch.testing.assert_close(mine(obs, act), theirs(obs, act), rtol=0, atol=1e-6)
        assert float(child.log_alpha.detach()) == -3.0
        assert torch.all(child.critic.q1[0].weight[:, OBS - 1] == 0)
    with pytest.raises(ValueError):
        SACUpdater(ActorCritic(OBS, ACT, (8,), "tanh", "squashed"), SACSettings(hidden_sizes=(8,))).start_from(
            parent.state_dict(), np.zeros(OBS, bool)
        )


def test_sac_trains_a_blend_new_network_only_and_distils_the_frozen_one():
    _, frozen = sac_source()
    with torch.no_grad():  # a source that acts: its means far from a new network's (near 0)
        frozen.actor[-1].bias[:ACT] = 1.0
    normaliser = RunningNormaliser(OBS)
    normaliser.update(np.random.default_rng(4).normal(size=(100, OBS)))
    torch.manual_seed(5)
    blend = new_blend(frozen, normaliser.state_vector(), ActorCritic(OBS, ACT, (16, 16), "tanh", "squashed"))
    blend.set_coefficient(0.0, 1.0)
    obs = normaliser.normalise(np.random.default_rng(6).normal(size=(8, OBS)), clip=False)
    # at c = 0 the squashed blend is the frozen policy exactly, sampled or deterministic
    obs_t = torch.as_tensor(obs)
    torch.testing.assert_close(blend.distribution_parameters(obs_t), frozen.distribution_parameters(obs_t))
    assert np.array_equal(blend.act(obs, deterministic=True)[0], frozen.act(obs, deterministic=True)[0])
    blend.set_coefficient(0.3, 1.0)
    updater = SACUpdater(blend, SACSettings(hidden_sizes=(8, 8), batch_size=16), seed=7, buffer_size=100)
    assert updater.actor_params == [p for n, p in blend.named_parameters() if n.startswith("student.actor.")]
    rng = np.random.default_rng(8)
    updater.buffer.add(
        rng.normal(size=(50, OBS)).astype(np.float32),
        rng.uniform(-1, 1, (50, ACT)).astype(np.float32),
        rng.normal(size=50).astype(np.float32),
        rng.normal(size=(50, OBS)).astype(np.float32),
        np.zeros(50, np.float32),
    )
    frozen_before = {k: v.clone() for k, v in blend.frozen.state_dict().items()}
    student_before = [p.detach().clone() for p in updater.actor_params]
    kl_before = blend.distillation_kl(torch.as_tensor(obs)).item()
    losses = {}
    for _ in range(30):
        losses = updater.update(5, lambda f: normaliser.normalise(f, clip=False))
    assert all(torch.equal(v, blend.frozen.state_dict()[k]) for k, v in frozen_before.items())
    assert all(not torch.equal(a, b) for a, b in zip(student_before, updater.actor_params, strict=True))
    assert losses["auxiliary_loss"] > 0 and blend.distillation_kl(torch.as_tensor(obs)).item() < kl_before
    assert isinstance(blend, BlendedPolicy)
