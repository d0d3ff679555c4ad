"""The learning maths without MPI or OpenSim: GAE, PPO losses and update, normaliser merge, policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrun.learn.gae import compute_gae
from lrun.learn.normaliser import RunningNormaliser
from lrun.learn.policy import ActorCritic, flat_parameters, load_flat_parameters
from lrun.learn.ppo import Batch, PPOSettings, PPOUpdater, ppo_losses


def gae_reference(rewards, values, terminated, truncated, final_values, next_value, gamma, lam):
    """Straightforward per-env recursion written independently of the vectorised version."""
    steps, envs = rewards.shape
    adv = np.zeros((steps, envs))
    for e in range(envs):
        running = 0.0
        for t in reversed(range(steps)):
            if terminated[t, e]:
                target, running = rewards[t, e], 0.0
            elif truncated[t, e]:
                target, running = rewards[t, e] + gamma * final_values[t, e], 0.0
            else:
                nxt = next_value[e] if t == steps - 1 else values[t + 1, e]
                target = rewards[t, e] + gamma * nxt
            running = target - values[t, e] + gamma * lam * running
            adv[t, e] = running
    return adv


def test_gae_terminated_is_worth_zero_truncated_bootstraps():
    gamma, lam = 0.9, 0.8
    rewards = np.array([[1.0], [1.0], [1.0]])
    values = np.array([[0.5], [0.5], [0.5]])
    final_values = np.array([[0.0], [7.0], [0.0]])
    next_value = np.array([2.0])
    term = np.array([[False], [True], [False]])
    trunc = np.array([[False], [False], [False]])
    adv_term, _ = compute_gae(rewards, values, term, trunc, final_values, next_value, gamma, lam)
    assert adv_term[1, 0] == pytest.approx(1.0 - 0.5)  # nothing after a terminal state
    adv_trunc, returns = compute_gae(rewards, values, trunc, term, final_values, next_value, gamma, lam)
    assert adv_trunc[1, 0] == pytest.approx(1.0 + gamma * 7.0 - 0.5)  # V(final observation) bootstraps
    assert adv_trunc[2, 0] == pytest.approx(1.0 + gamma * 2.0 - 0.5)
    # the chain is cut at the episode end in both cases: step 0 only sees step 1's advantage
    assert adv_trunc[0, 0] == pytest.approx(1.0 + gamma * 0.5 - 0.5 + gamma * lam * adv_trunc[1, 0])
    assert np.allclose(returns, adv_trunc + values)


def test_gae_matches_an_independent_recursion_on_random_data():
    rng = np.random.default_rng(0)
    steps, envs = 50, 4
    args = (
        rng.normal(size=(steps, envs)),
        rng.normal(size=(steps, envs)),
        rng.random((steps, envs)) < 0.05,
        rng.random((steps, envs)) < 0.05,
        rng.normal(size=(steps, envs)),
        rng.normal(size=envs),
    )
    term, trunc = args[2], args[3] & ~args[2]
    args = (args[0], args[1], term, trunc, args[4], args[5])
    adv, _ = compute_gae(*args, gamma=0.99, lam=0.95)
    assert np.allclose(adv, gae_reference(*args, 0.99, 0.95))


def test_normaliser_merge_equals_statistics_of_all_data():
    rng = np.random.default_rng(1)
    chunks = [rng.normal(3.0, 2.0, size=(n, 5)) for n in (10, 200, 37)]
    merged = RunningNormaliser(5)
    for chunk in chunks:  # as three iterations
        merged.update_from_moments(sum(RunningNormaliser.moments(c[i::3]) for i in range(3) for c in [chunk]))
    everything = np.concatenate(chunks)
    assert merged.count == len(everything)
    assert np.allclose(merged.mean, everything.mean(axis=0))
    assert np.allclose(merged.var, everything.var(axis=0))
    x = merged.normalise(everything)
    assert x.dtype == np.float32 and np.allclose(x.mean(axis=0), 0, atol=1e-5)
    copy = RunningNormaliser(5)
    copy.load_state_vector(merged.state_vector())
    assert np.array_equal(copy.normalise(everything), x)
    with pytest.raises(ValueError, match="needs 15 values"):
        copy.load_state_vector(np.zeros(3))


@pytest.mark.parametrize("distribution", ["gaussian", "beta"])
def test_policy_actions_logprobs_and_flat_parameters(distribution):
    torch.manual_seed(0)
    policy = ActorCritic(41, 18, (32, 32), "tanh", distribution)
    obs = np.random.default_rng(0).normal(size=(5, 41)).astype(np.float32)
    raw, logp, value = policy.act(obs)
    assert raw.shape == (5, 18) and logp.shape == (5,) and value.shape == (5,)
    dist = policy.distribution(torch.as_tensor(obs))
    assert np.allclose(dist.log_prob(torch.as_tensor(raw)).detach().numpy(), logp, atol=1e-5)
    env_action = policy.env_action(raw, np.zeros(18), np.ones(18))
    assert env_action.min() >= 0 and env_action.max() <= 1
    other = ActorCritic(41, 18, (32, 32), "tanh", distribution)
    load_flat_parameters(other, flat_parameters(policy))
    assert np.array_equal(other.act(obs, deterministic=True)[0], policy.act(obs, deterministic=True)[0])
    with pytest.raises(ValueError, match="parameter vector"):
        load_flat_parameters(other, np.zeros(3, np.float32))


def make_batch(policy: ActorCritic, n: int = 256, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    actions, logprobs, values = policy.act(obs)
    advantages = rng.normal(size=n)
    return Batch.from_numpy(
        obs=obs, actions=actions, logprobs=logprobs, advantages=advantages, returns=values + advantages, values=values
    )


def test_ppo_losses_at_the_behaviour_policy():
    torch.manual_seed(0)
    policy = ActorCritic(3, 2, (16,))
    batch = make_batch(policy)
    losses = ppo_losses(policy, batch, clip_coef=0.2, clip_value_loss=False)
    # ratio 1 everywhere: the policy loss is -mean(advantage), no clipping, no KL
    assert float(losses["pg_loss"].detach()) == pytest.approx(-float(batch.advantages.mean()), abs=1e-5)
    assert float(losses["approx_kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["clipfrac"]) == 0.0
    assert float(losses["v_loss"].detach()) == pytest.approx(0.5 * float((batch.advantages**2).mean()), rel=1e-4)


def test_ppo_clips_the_ratio():
    torch.manual_seed(0)
    policy = ActorCritic(3, 2, (16,))
    batch = make_batch(policy)
    with torch.no_grad():
        policy.log_std += 0.5  # a very different policy
    losses = ppo_losses(policy, batch, clip_coef=0.2, clip_value_loss=False)
    assert float(losses["clipfrac"]) > 0.3
    assert float(losses["approx_kl"]) > 0.01


def test_ppo_update_improves_the_surrogate_and_reduce_hook_sees_every_minibatch():
    torch.manual_seed(0)
    policy = ActorCritic(3, 2, (16,))
    batch = make_batch(policy)
    calls = []

    def reduce(flat: np.ndarray) -> None:
        calls.append(flat.shape)
        flat *= 1.0  # an identity "average" over one learner

    learner = PPOUpdater(policy, PPOSettings(learning_rate=1e-2, epochs=3, minibatches=4), reduce)
    before = ppo_losses(policy, batch, 0.2, False)
    metrics = learner.update(batch)
    after = ppo_losses(policy, batch, 0.2, False)
    # the gradients and this minibatch's approx KL travel in one vector
    assert len(calls) == 12 and calls[0] == (sum(p.numel() for p in policy.parameters()) + 1,)
    assert float(after["pg_loss"].detach()) < float(before["pg_loss"].detach())
    assert float(after["v_loss"].detach()) < float(before["v_loss"].detach())
    assert set(metrics) >= {"pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac", "explained_variance"}


def test_target_kl_stops_the_epochs_once_the_policy_has_moved_too_far():
    torch.manual_seed(0)
    settings = PPOSettings(learning_rate=3e-2, epochs=10, minibatches=4)
    policy = ActorCritic(3, 2, (16,))
    batch = make_batch(policy)
    full = PPOUpdater(policy, settings).update(batch)
    assert full["updates"] == 40
    torch.manual_seed(0)
    policy = ActorCritic(3, 2, (16,))
    limited = PPOUpdater(policy, PPOSettings(learning_rate=3e-2, epochs=10, minibatches=4, target_kl=0.01))
    metrics = limited.update(make_batch(policy))
    assert 1 <= metrics["updates"] < 40
    # the minibatch that stopped it had left the trust region: at the stopping point the policy's KL from the
    # behaviour policy is beyond 1.5 x target
    assert float(ppo_losses(policy, batch, 0.2, False)["approx_kl"]) > 0.015


def test_the_early_stop_follows_the_kl_averaged_over_learners():
    """Every learner must take the same decision: it is made on the KL that came back from the Allreduce."""
    torch.manual_seed(0)
    policy = ActorCritic(3, 2, (16,))
    batch = make_batch(policy)
    settings = PPOSettings(learning_rate=1e-3, epochs=2, minibatches=2, target_kl=0.01)

    def others_far_off(flat: np.ndarray) -> None:
        flat[-1] = 1.0  # another learner's minibatch moved a lot: the mean KL is high

    before = flat_parameters(policy)
    assert PPOUpdater(policy, settings, others_far_off).update(batch)["updates"] == 0
    assert np.array_equal(flat_parameters(policy), before)

    def others_still(flat: np.ndarray) -> None:
        flat[-1] = 0.0

    assert PPOUpdater(policy, settings, others_still).update(batch)["updates"] == 4


def test_ppo_rejects_too_few_samples():
    policy = ActorCritic(3, 2, (16,))
    with pytest.raises(ValueError, match="minibatches"):
        PPOUpdater(policy, PPOSettings(minibatches=1000)).update(make_batch(policy, n=10))
