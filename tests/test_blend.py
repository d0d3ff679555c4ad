"""Policy blending and behavioural cloning: the maths, without MPI or OpenSim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrun.learn.blend import BlendedPolicy, blend_coefficient, build_from_spec, new_blend, student_of
from lrun.learn.clone import CloneSettings, clone_policy, imitation_losses, teacher_targets
from lrun.learn.normaliser import RunningNormaliser
from lrun.learn.policy import ActorCritic, count_trainable, flat_parameters
from lrun.learn.ppo import Batch, PPOSettings, PPOUpdater

OBS, ACT = 7, 3


def trained_policy(distribution: str = "gaussian", hidden=(8,), seed: int = 1) -> ActorCritic:
    """A small network with non-trivial weights (as if trained)."""
    torch.manual_seed(seed)
    policy = ActorCritic(OBS, ACT, hidden, "tanh", distribution, init_log_std=-0.3)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return policy


def statistics(seed: int) -> RunningNormaliser:
    rng = np.random.default_rng(seed)
    normaliser = RunningNormaliser(OBS)
    normaliser.update(rng.normal(2.0, 3.0, size=(500, OBS)))
    return normaliser


def blend_of(frozen: ActorCritic, normaliser: RunningNormaliser, hidden=(32, 32), seed: int = 5) -> BlendedPolicy:
    torch.manual_seed(seed)
    student = ActorCritic(OBS, ACT, hidden, "tanh", frozen.distribution_name)
    return new_blend(frozen, normaliser.state_vector(), student)


@pytest.mark.parametrize("distribution", ["gaussian", "beta"])
def test_blend_at_coefficient_zero_acts_exactly_like_the_frozen_policy(distribution):
    frozen = trained_policy(distribution)
    normaliser = statistics(0)
    blend = blend_of(frozen, normaliser)
    raw = np.random.default_rng(3).normal(2.0, 3.0, size=(64, OBS))
    x = normaliser.normalise(raw)
    blend.set_input_statistics(normaliser.mean, normaliser.var)  # the run starts from the frozen statistics
    assert float(blend.coefficient) == 0.0
    np.testing.assert_array_equal(blend.act(x, deterministic=True)[0], frozen.act(x, deterministic=True)[0])
    torch.manual_seed(11)
    sampled, logp, _ = blend.act(x)
    torch.manual_seed(11)
    expected, expected_logp, _ = frozen.act(x)
    np.testing.assert_array_equal(sampled, expected)
    np.testing.assert_array_equal(logp, expected_logp)


def test_blend_keeps_the_frozen_inputs_when_the_run_statistics_move_on():
    frozen = trained_policy()
    own = statistics(0)
    blend = blend_of(frozen, own)
    moved = statistics(0)
    moved.update(np.random.default_rng(9).normal(-1.0, 0.5, size=(800, OBS)))  # the run's statistics drift
    raw = np.random.default_rng(4).normal(1.0, 1.0, size=(64, OBS))
    blend.set_input_statistics(moved.mean, moved.var)
    got = blend.act(moved.normalise(raw, clip=False), deterministic=True)[0]
    want = frozen.act(own.normalise(raw), deterministic=True)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # without the mapping the frozen network would see other inputs and act differently
    assert np.abs(frozen.act(moved.normalise(raw), deterministic=True)[0] - want).max() > 1e-2


def test_blend_formula_and_coefficient_one_is_the_student_alone():
    frozen = trained_policy()
    normaliser = statistics(0)
    blend = blend_of(frozen, normaliser)
    with torch.no_grad():
        for p in blend.student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.as_tensor(normaliser.normalise(np.random.default_rng(5).normal(2, 3, size=(16, OBS))))
    blend.set_input_statistics(normaliser.mean, normaliser.var)
    blend.set_coefficient(0.25)
    expected = 0.75 * frozen.distribution_parameters(x) + 0.25 * blend.student.distribution_parameters(x)
    torch.testing.assert_close(blend.distribution_parameters(x), expected)
    assert student_of(blend) is None
    blend.set_coefficient(1.0)
    assert torch.equal(blend.distribution_parameters(x), blend.student.distribution_parameters(x))  # exactly
    torch.testing.assert_close(blend.value(x), blend.student.value(x))
    assert student_of(blend) is blend.student
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        blend.set_coefficient(1.5)


def test_ppo_on_a_blend_never_changes_the_frozen_network():
    frozen = trained_policy()
    normaliser = statistics(0)
    blend = blend_of(frozen, normaliser)
    blend.set_input_statistics(normaliser.mean, normaliser.var)
    blend.set_coefficient(0.3)
    frozen_before = [p.detach().clone() for p in frozen.parameters()]
    student_before = flat_parameters(blend.student)
    assert count_trainable(blend) == count_trainable(blend.student)  # only the student travels and trains
    n = 256
    rng = np.random.default_rng(0)
    obs = normaliser.normalise(rng.normal(2, 3, size=(n, OBS)))
    actions, logprobs, values = blend.act(obs)
    batch = Batch.from_numpy(
        obs=obs,
        actions=actions,
        logprobs=logprobs,
        advantages=rng.normal(size=n),
        returns=rng.normal(size=n),
        values=values,
    )
    learner = PPOUpdater(blend, PPOSettings(epochs=2, minibatches=4))
    learner.update(batch)
    for before, p in zip(frozen_before, frozen.parameters(), strict=True):
        assert p.grad is None and not p.requires_grad
        torch.testing.assert_close(p, before, rtol=0, atol=0)
    assert np.abs(flat_parameters(blend.student) - student_before).max() > 1e-4


def test_blends_rebuild_from_their_spec_and_nest():
    normaliser = statistics(0)
    inner = blend_of(trained_policy(), normaliser)
    inner.set_coefficient(0.6)
    later = statistics(1)
    torch.manual_seed(2)
    outer = new_blend(inner, later.state_vector(), ActorCritic(OBS, ACT, (64,), "tanh", "gaussian"))
    outer.set_coefficient(0.5)
    spec = outer.spec()
    assert spec["kind"] == "blend" and spec["frozen"]["kind"] == "blend"
    rebuilt = build_from_spec(spec)
    rebuilt.load_state_dict(outer.state_dict())
    assert float(rebuilt.frozen.coefficient) == pytest.approx(0.6)
    x = later.normalise(np.random.default_rng(6).normal(2, 3, size=(8, OBS)))
    for policy in (outer, rebuilt):
        policy.set_input_statistics(later.mean, later.var)
    np.testing.assert_array_equal(rebuilt.act(x, deterministic=True)[0], outer.act(x, deterministic=True)[0])
    # at c = 0 the outer blend acts like the inner one as its run left it (statistics `later`), even when the
    # outer run's statistics have moved on
    outer.set_coefficient(0.0)
    moved = statistics(2)
    raw = np.random.default_rng(6).normal(2, 3, size=(8, OBS))
    outer.set_input_statistics(moved.mean, moved.var)
    got = outer.act(moved.normalise(raw, clip=False), deterministic=True)[0]
    inner.set_input_statistics(later.mean, later.var)
    np.testing.assert_allclose(got, inner.act(later.normalise(raw), deterministic=True)[0], rtol=0, atol=1e-5)


def test_blend_refuses_networks_that_do_not_fit():
    with pytest.raises(ValueError, match="distribution_name"):
        BlendedPolicy(trained_policy("gaussian"), ActorCritic(OBS, ACT, (8,), "tanh", "beta"))
    with pytest.raises(ValueError, match="obs_size"):
        BlendedPolicy(trained_policy(), ActorCritic(OBS + 1, ACT, (8,)))


def test_blend_coefficient_schedule():
    assert [blend_coefficient(i, 0.0, 1.0, 4) for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert blend_coefficient(3, 0.2, 0.6, 0) == 0.6
    assert blend_coefficient(1, 1.0, 0.0, 2) == 0.5


@pytest.mark.parametrize("distribution", ["gaussian", "beta"])
def test_cloning_reduces_the_imitation_loss(distribution):
    teacher = trained_policy(distribution, hidden=(16,))
    obs = np.random.default_rng(0).normal(size=(2000, OBS)).astype(np.float32)
    torch.manual_seed(3)
    student = ActorCritic(OBS, ACT, (64, 64), "tanh", distribution)
    history = clone_policy(student, teacher, obs, CloneSettings(epochs=15, learning_rate=3e-3), seed=0)
    first, last = history[0], history[-1]
    assert [row["epoch"] for row in history] == list(range(16))
    assert last["holdout_kl"] < 0.2 * first["holdout_kl"], history
    assert last["holdout_value_mse"] < 0.5 * first["holdout_value_mse"], history
    params, values = teacher_targets(teacher, torch.as_tensor(obs))
    with torch.no_grad():
        kl, _ = imitation_losses(student, torch.as_tensor(obs), params, values)
    assert float(kl) == pytest.approx(
        (1 - 0.1) * last["train_kl"] + 0.1 * last["holdout_kl"], rel=1e-3
    )  # the reported losses are the real ones
    # deterministic: learner ranks that clone side by side stay identical
    torch.manual_seed(3)
    twin = ActorCritic(OBS, ACT, (64, 64), "tanh", distribution)
    clone_policy(twin, teacher, obs, CloneSettings(epochs=15, learning_rate=3e-3), seed=0)
    np.testing.assert_array_equal(flat_parameters(twin), flat_parameters(student))


def test_blending_distils_the_frozen_policy_into_the_new_network():
    """With c < 1, PPO also pulls the new network's own distribution towards the frozen one (KL falls)."""
    frozen = trained_policy()
    normaliser = statistics(0)
    blend = blend_of(frozen, normaliser)
    blend.set_input_statistics(normaliser.mean, normaliser.var)
    blend.set_coefficient(0.2, distill_coef=1.0)
    frozen_before = flat_parameters_of(frozen)
    rng = np.random.default_rng(1)
    obs = normaliser.normalise(rng.normal(2, 3, size=(512, OBS)), clip=False)
    x = torch.as_tensor(obs)
    with torch.no_grad():
        before = float(blend.distillation_kl(x))
        assert float(blend.auxiliary_loss(x)) == pytest.approx(0.8 * before, rel=1e-5)
    learner = PPOUpdater(blend, PPOSettings(epochs=5, minibatches=4, learning_rate=3e-3))
    for _ in range(5):
        actions, logprobs, values = blend.act(obs)
        batch = Batch.from_numpy(
            obs=obs, actions=actions, logprobs=logprobs, advantages=np.zeros(512), returns=values, values=values
        )
        metrics = learner.update(batch)
    assert "auxiliary_loss" in metrics
    with torch.no_grad():
        assert float(blend.distillation_kl(x)) < 0.2 * before
    np.testing.assert_array_equal(flat_parameters_of(frozen), frozen_before)
    blend.set_coefficient(1.0)
    assert blend.auxiliary_loss(x) is None  # the term fades out with c


def flat_parameters_of(module: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy().copy()
