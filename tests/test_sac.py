"""Soft actor-critic: the squashed-Gaussian policy, the replay buffer, stitching rollouts into transitions, the
learner on a problem with a known answer, and a whole SAC run under mpiexec with resume and `lrun eval`."""

from __future__ import annotations

import csv
import json
import re
import signal

import h5py
import numpy as np
import pytest
import torch
from helpers import EXPERIMENTS, LRUN, MPIEXEC, run, sets, signal_after

from lrun.checkpoint import load_checkpoint
from lrun.config import ConfigError, build_config
from lrun.learn.blend import build_from_spec
from lrun.learn.policy import ActorCritic
from lrun.learn.sac import ReplayBuffer, SACSettings, SACUpdater, TransitionStitcher


def test_squashed_policy_acts_inside_the_box_and_its_mode_is_tanh_of_the_mean():
    torch.manual_seed(0)
    policy = ActorCritic(5, 3, [16], distribution="squashed")
    obs = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32) * 3
    raw, logprob, _ = policy.act(obs)
    assert np.all(np.abs(raw) < 1) and np.all(np.isfinite(logprob))
    excitations = policy.env_action(raw, np.zeros(3), np.ones(3))
    assert np.all((excitations > 0) & (excitations < 1))
    mode, _, _ = policy.act(obs, deterministic=True)
    mean = torch.chunk(policy.distribution_parameters(torch.as_tensor(obs)), 2, dim=-1)[0]
    np.testing.assert_allclose(mode, torch.tanh(mean).detach().numpy(), atol=1e-6)
    # the log std stays in its range however far out the inputs are
    log_std = torch.chunk(policy.distribution_parameters(torch.full((1, 5), 1e6)), 2, dim=-1)[1]
    assert torch.all((log_std >= -5.0) & (log_std <= 2.0))
    rebuilt = build_from_spec(policy.spec())
    rebuilt.load_state_dict(policy.state_dict())
    assert np.array_equal(rebuilt.act(obs, deterministic=True)[0], mode)


def test_replay_buffer_overwrites_the_oldest_and_samples_what_it_holds():
    buffer = ReplayBuffer(5, 2, 1, seed=0)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(1)
    for first in (0, 3):  # 6 transitions into 5 slots: the first is gone
        ids = np.arange(first, first + 3, dtype=np.float32)
        buffer.add(np.stack([ids, ids], 1), ids[:, None], ids, np.stack([ids, ids], 1) + 1, np.zeros(3))
    assert buffer.size == 5
    obs, actions, rewards, next_obs, _terminated = buffer.sample(1000)
    assert set(rewards.tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.array_equal(obs[:, 0], rewards) and np.array_equal(actions[:, 0], rewards)
    assert np.array_equal(next_obs[:, 1], rewards + 1)


def test_stitcher_pairs_each_state_with_the_next_and_carries_the_last_step_over():
    steps, envs = 3, 2
    features = np.arange(steps * envs, dtype=np.float32).reshape(steps, envs, 1)  # state id = t * envs + e
    actions = features.copy()
    rewards = features[..., 0] * 10
    terminated = np.zeros((steps, envs), bool)
    truncated = np.zeros((steps, envs), bool)
    terminated[1, 0] = True  # env 0 falls at t = 1: its next row is a new episode, never bootstrapped from
    truncated[0, 1] = True  # env 1 hits the time limit at t = 0: its final observation is not in the rollout
    stitcher = TransitionStitcher()
    obs, acts, rews, nxt, term = stitcher.transitions(0, features, actions, rewards, terminated, truncated)
    pairs = sorted(zip(obs[:, 0].tolist(), nxt[:, 0].tolist(), term.tolist(), strict=True))
    # t=0: (0 -> 2); env 1's truncated step left out; t=1: (2 -> 4, terminated), (3 -> 5)
    assert pairs == [(0.0, 2.0, 0.0), (2.0, 4.0, 1.0), (3.0, 5.0, 0.0)]
    assert np.array_equal(rews, obs[:, 0] * 10) and np.array_equal(acts, obs)
    later = features + 100
    obs, _, _, nxt, _ = stitcher.transitions(
        0, later, later, later[..., 0], np.zeros_like(terminated), np.zeros_like(truncated)
    )
    carried = sorted((o, n) for o, n in zip(obs[:, 0].tolist(), nxt[:, 0].tolist(), strict=True) if o < 100)
    assert carried == [(4.0, 100.0), (5.0, 101.0)]  # the last rows of the first rollout meet the next first rows
    _, _, _, nxt_other, _ = TransitionStitcher().transitions(7, later, later, later[..., 0], terminated, truncated)
    assert len(nxt_other) == 3  # another source (simulator) carries nothing over from source 0


def test_sac_learns_the_best_action_of_a_one_step_problem():
    """Reward -(sum (a - 0.4)^2) and the episode ends: Q learns the reward and the actor's actions centre on 0.4
    (their mean: with the entropy it keeps, the squashed Gaussian's mode sits a little nearer 0)."""
    torch.manual_seed(0)
    actor = ActorCritic(3, 2, [32], distribution="squashed")
    calls = []

    def reduce(flat: np.ndarray) -> None:
        calls.append(len(flat))  # an identity average over one learner

    settings = SACSettings(learning_rate=3e-3, batch_size=128, hidden_sizes=[64], init_alpha=0.01)
    learner = SACUpdater(actor, settings, reduce, seed=1, buffer_size=4096)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(4096, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (4096, 2)).astype(np.float32)
    rewards = -np.square(actions - 0.4).sum(axis=1).astype(np.float32)
    learner.buffer.add(obs, actions, rewards, obs, np.ones(4096, np.float32))
    metrics = learner.update(1500, lambda f: f)
    assert len(calls) == 3 * 1500  # critics, actor and temperature each average their gradients
    sampled = np.stack([actor.act(obs[:50])[0] for _ in range(200)])
    assert np.abs(sampled.mean(axis=0) - 0.4).max() < 0.1, sampled.mean(axis=(0, 1))
    with torch.no_grad():
        q1, _ = learner.critic(torch.as_tensor(obs[:200]), torch.as_tensor(actions[:200]))
    assert np.corrcoef(q1.numpy(), rewards[:200])[0, 1] > 0.95
    assert metrics["updates"] == 1500 and np.isfinite(metrics["q_loss"])
    # the learner's state round-trips (critics, targets, temperature, optimisers)
    other = SACUpdater(ActorCritic(3, 2, [32], distribution="squashed"), settings, seed=2, buffer_size=8)
    other.load_state_dict(learner.state_dict())
    assert torch.equal(other.log_alpha, learner.log_alpha)
    assert all(torch.equal(a, b) for a, b in zip(other.target.parameters(), learner.target.parameters(), strict=True))


def test_a_critic_warmup_moves_the_critics_only():
    """update(actor=False): the critics learn; the actor, its optimiser and the temperature stay as they were, and
    only the critics' gradients are averaged."""
    torch.manual_seed(0)
    actor = ActorCritic(3, 2, [16], distribution="squashed")
    calls = []
    learner = SACUpdater(actor, SACSettings(batch_size=32, hidden_sizes=[16]), calls.append, seed=1, buffer_size=256)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(256, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (256, 2)).astype(np.float32)
    learner.buffer.add(obs, actions, np.ones(256, np.float32), obs, np.zeros(256, np.float32))
    before = {k: v.clone() for k, v in actor.state_dict().items()}
    critic_before = [p.clone() for p in learner.critic.parameters()]
    alpha_before = learner.log_alpha.detach().clone()
    metrics = learner.update(20, lambda f: f, actor=False)
    assert len(calls) == 20  # one Allreduce per step: the critics'
    assert all(torch.equal(before[k], v) for k, v in actor.state_dict().items())
    assert torch.equal(learner.log_alpha.detach(), alpha_before) and not learner.actor_optimizer.state
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, learner.critic.parameters(), strict=True))
    assert np.isnan(metrics["actor_loss"]) and np.isfinite(metrics["q_loss"]) and metrics["updates"] == 20
    learner.update(5, lambda f: f)  # then the actor and the temperature learn too
    assert len(calls) == 20 + 3 * 5 and not torch.equal(learner.log_alpha.detach(), alpha_before)


def test_the_actor_step_leaves_the_critics_gradients_alone_and_restored_optimisers_stay_fused():
    """The actor learns through the critics without giving them gradients (only its own are averaged), and an
    updater restored from a checkpoint whose optimisers were per-tensor Adam (an older lrun) steps fused."""
    torch.manual_seed(0)
    actor = ActorCritic(3, 2, [16], distribution="squashed")
    sizes = []
    learner = SACUpdater(actor, SACSettings(batch_size=32, hidden_sizes=[16]), lambda v: sizes.append(v.size))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(256, 3)).astype(np.float32)
    learner.buffer.add(
        obs, rng.uniform(-1, 1, (256, 2)).astype(np.float32), np.ones(256, np.float32), obs, 0 * obs[:, 0]
    )
    learner.update(2, lambda f: f)
    critic_size = sum(p.numel() for p in learner.critic.parameters())
    actor_size = sum(p.numel() for p in learner.actor_params)
    assert sizes == [critic_size, actor_size, 1] * 2
    critic_grads = [p.grad.clone() for p in learner.critic.parameters()]
    learner._actor_and_temperature_step(
        torch.as_tensor(obs[:32]), torch.tensor(0.1), {"actor_loss": 0.0, "entropy": 0.0}
    )
    assert all(torch.equal(g, p.grad) for g, p in zip(critic_grads, learner.critic.parameters(), strict=True))
    assert all(p.requires_grad for p in learner.critic.parameters())  # trainable again for the next critic step
    # the targets move a step tau towards the critics
    critics = [p.detach().clone() for p in learner.critic.parameters()]
    targets = [p.clone() for p in learner.target.parameters()]
    learner.update(1, lambda f: f, actor=False)
    for before, critic, target in zip(targets, learner.critic.parameters(), learner.target.parameters(), strict=True):
        torch.testing.assert_close(target, (1 - 0.005) * before + 0.005 * critic.detach())
    assert any(not torch.equal(a, b) for a, b in zip(critics, learner.critic.parameters(), strict=True))

    state = learner.state_dict()
    for name in ("actor_optimizer", "critic_optimizer", "alpha_optimizer"):
        for group in state[name]["param_groups"]:
            group["fused"] = None  # as torch.optim.Adam(params, lr) saved them
    restored = SACUpdater(ActorCritic(3, 2, [16], distribution="squashed"), SACSettings(hidden_sizes=[16]))
    restored.load_state_dict(state)
    for optimizer in (restored.actor_optimizer, restored.critic_optimizer, restored.alpha_optimizer):
        assert all(group["fused"] for group in optimizer.param_groups)
        assert optimizer.state  # the moments came back
    restored.buffer.add(*(np.array(a) for a in learner.buffer.sample(64)))
    before = [p.detach().clone() for p in restored.actor_params]
    metrics = restored.update(2, lambda f: f)  # and step, fused
    assert np.isfinite(metrics["q_loss"]) and metrics["updates"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, restored.actor_params, strict=True))


def test_a_run_with_a_critic_warmup_starts_the_actor_when_it_ends(tmp_path):
    """Serial SAC, 32 decisions per iteration (16 updates): updates from 48 decisions in (iteration 2), the actor
    from 48 + 64 (iteration 4); a resume without the buffer refills it, and does not warm up again."""
    run_dir = tmp_path / "warm"
    recipe = [str(EXPERIMENTS / "recipes" / "walk-sac.toml")]
    extra = ("sac.learning_starts=48", "sac.critic_warmup=64", "sac.mirror=false")
    result = run([LRUN, "train", *recipe, *sac_settings(run_dir, *extra, "run.iterations=4")], timeout=300)
    assert result.returncode == 0, result.stderr
    assert progress_column(run_dir, "losses/updates") == [0.0, 16.0, 16.0, 16.0]
    actor_loss = progress_column(run_dir, "losses/actor_loss")
    assert np.isnan(actor_loss[:3]).all() and np.isfinite(actor_loss[3])
    alpha = progress_column(run_dir, "losses/alpha")
    assert alpha[1] == alpha[2] == pytest.approx(0.2) and alpha[3] != pytest.approx(0.2)

    (run_dir / "checkpoints" / "replay-000.h5").unlink()
    resume = [*sac_settings(run_dir, *extra, "run.iterations=6"), "--resume", str(run_dir)]
    again = run([LRUN, "train", *recipe, *resume], timeout=300)
    assert again.returncode == 0, again.stderr
    assert progress_column(run_dir, "losses/updates")[4:] == [0.0, 16.0]  # the refill, then updates
    assert np.isfinite(progress_column(run_dir, "losses/actor_loss")[5])  # of the actor too: no second warm-up


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["run.algorithm=sac"], "run.algorithm = sac trains policy.distribution = squashed"),
        (["policy.distribution=squashed"], "run.algorithm = sac trains policy.distribution = squashed"),
        (["run.algorithm=sac", "policy.distribution=squashed", "sac.tau=0"], r"sac.tau = 0.0: must be in \(0, 1\]"),
        (["run.algorithm=sac", "policy.distribution=squashed", "sac.hidden_sizes=[]"], "sac.hidden_sizes"),
        (["run.algorithm=a2c"], "run.algorithm = 'a2c': must be ppo or sac"),
    ],
)
def test_bad_sac_configs_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, overrides)


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def sac_settings(run_dir, *extra: str) -> list[str]:
    """A small SAC run of the walk-sac recipe: 2 simulators x 2 envs x 16 decisions = 64 decisions per iteration."""
    return sets(
        "env.physics=fast",
        "layout.envs_per_rank=2",
        "layout.steps_per_env=16",
        "sac.learning_starts=100",
        "sac.batch_size=32",
        "sac.hidden_sizes=[32]",
        "policy.hidden_sizes=[32]",
        "sac.mirror=true",
        "sac.mirror_min_asymmetry=0.25",
        f"run.run_dir={run_dir}",
        *extra,
    )


def progress_column(run_dir, column: str) -> list[float]:
    with open(run_dir / "progress.csv", newline="") as handle:
        return [float(r[column]) for r in csv.DictReader(handle)]


def test_a_sac_run_under_mpiexec_resumes_with_its_replay_buffer_and_is_evaluated(tmp_path):
    run_dir = tmp_path / "sac"
    settings = sac_settings(run_dir, "sac.overlap=true")  # the recipe keeps its training synchronous
    recipe = [str(EXPERIMENTS / "recipes" / "walk-sac.toml")]
    first = run([MPIEXEC, "-n", "3", LRUN, "train", *recipe, *settings, *sets("run.iterations=2")], timeout=300)
    assert first.returncode == 0, first.stderr
    payload = load_checkpoint(run_dir)
    assert payload["meta"]["policy_spec"]["distribution"] == "squashed" and "critic" in payload["optimizer"]
    rows = (run_dir / "progress.csv").read_text().splitlines()
    assert len(rows) == 3 and "losses/q_loss" in rows[0]
    assert "filling the replay buffer: " in first.stdout  # the first iteration's line: no losses yet
    held = progress_column(run_dir, "losses/replay_transitions")[-1]
    replay = run_dir / "checkpoints" / "replay-000.h5"
    with h5py.File(replay, "r") as f:  # the buffer as the last checkpoint left it, mirror images included
        assert f.attrs["size"] == held and f.attrs["iteration"] == 2 and 2 * 64 < held < 4 * 64
    resume = ["--resume", str(run_dir), *settings, *sets("run.iterations=3")]
    again = run([MPIEXEC, "-n", "3", LRUN, "train", *recipe, *resume])
    assert again.returncode == 0, again.stderr
    assert f"replay buffer: {int(held)} transitions back from {replay}" in again.stdout
    # updates once 100 decisions are in, and at once after the resume: the buffer came back
    updates = progress_column(run_dir, "losses/updates")
    assert updates[0] == 0 and updates[1] > 0 and updates[2] > 0
    assert progress_column(run_dir, "losses/replay_transitions")[2] > held
    resumed = load_checkpoint(run_dir)
    assert resumed["iteration"] == 3
    # overlapped (sac.overlap, the default): the simulators acted one update behind, and the checkpoint keeps the
    # parameters they act with next, for a resume to hand out again
    assert progress_column(run_dir, "charts/policy_lag") == [1.0, 1.0, 1.0]
    acting = resumed["acting_policy"]
    learnt = torch.cat([p.flatten() for name, p in resumed["policy"].items() if "frozen" not in name])
    assert acting.shape == learnt.shape and not torch.equal(acting.float(), learnt.float())
    # the critics, targets and temperature came back from the checkpoint and went on learning
    assert float(payload["optimizer"]["log_alpha"]) != pytest.approx(float(np.log(0.2)))
    assert not torch.equal(resumed["optimizer"]["log_alpha"], payload["optimizer"]["log_alpha"])

    replay.unlink()  # without its file, a resumed run says so and refills its buffer before learning
    lost = run(
        [MPIEXEC, "-n", "3", LRUN, "train", *recipe, *settings, *sets("run.iterations=4"), "--resume", str(run_dir)]
    )
    assert lost.returncode == 0, lost.stderr
    assert "replay buffer: no replay-000.h5 beside the checkpoint: it refills (100 decisions" in lost.stdout
    assert progress_column(run_dir, "losses/updates")[3] == 0
    with h5py.File(replay, "r") as f:
        assert f.attrs["iteration"] == 4 and f.attrs["size"] == progress_column(run_dir, "losses/replay_transitions")[3]

    out = tmp_path / "eval"
    ev = run(
        [LRUN, "eval", str(run_dir), "--episodes", "1", "--difficulty", "0", "--physics", "fast", "--out", str(out)]
    )
    assert ev.returncode == 0, ev.stderr
    assert json.loads((out / "eval.json").read_text())["summary"]["episodes"] == 1


def test_a_stop_signal_keeps_every_learners_replay_buffer_with_the_checkpoint(tmp_path):
    run_dir = tmp_path / "sac"
    recipe = [str(EXPERIMENTS / "recipes" / "walk-sac.toml")]
    # two learners train one pair of critics: checked identical (with the policy and temperature) every iteration
    settings = sac_settings(run_dir, "layout.learners=2", "run.checkpoint_every=50", "run.sync_check_every=1")
    command = [MPIEXEC, "-n", "4", LRUN, "train", *recipe, *settings, *sets("run.iterations=40")]
    stopped = signal_after(command, "iter 3/40", signal.SIGUSR1)
    out, err = stopped.stdout, stopped.stderr
    assert stopped.returncode == 3, err
    stopped_at = int(re.search(r"checkpoint at iteration (\d+) written", out).group(1))
    assert load_checkpoint(run_dir)["iteration"] == stopped_at
    held = progress_column(run_dir, "losses/replay_transitions")[stopped_at - 1]
    for learner in (0, 1):  # 1 simulator x 2 envs x 16 decisions per learner and iteration, plus mirror images
        with h5py.File(run_dir / "checkpoints" / f"replay-{learner:03d}.h5", "r") as f:
            assert f.attrs["iteration"] == stopped_at and stopped_at * 31 <= f.attrs["size"] <= stopped_at * 64
            if learner == 0:
                assert f.attrs["size"] == held
    again = run(
        [
            MPIEXEC,
            "-n",
            "4",
            LRUN,
            "train",
            *recipe,
            *settings,
            *sets(f"run.iterations={stopped_at + 1}"),
            "--resume",
            str(run_dir),
        ]
    )
    assert again.returncode == 0, again.stderr
    assert progress_column(run_dir, "losses/updates")[stopped_at] > 0  # both learners had their buffers back


def test_sampled_log_probabilities_stay_exact_where_tanh_saturates():
    """log pi(a) = log N(u) - sum log(1 - tanh(u)^2), taken at the Gaussian sample u itself: a saturated tanh
    (a large mean) must not turn into a huge negative log-probability (that once blew up the critics)."""
    torch.manual_seed(0)
    actor = ActorCritic(3, 2, [16], distribution="squashed")
    with torch.no_grad():
        actor.actor[-1].bias.copy_(torch.tensor([12.0, -15.0, -3.0, -3.0]))  # means far out, std e^-3.x
    learner = SACUpdater(actor, SACSettings(hidden_sizes=[16]), seed=0, buffer_size=8)
    obs = torch.zeros(64, 3)
    actions, logprob = learner._sample_actions(obs)
    assert torch.all(torch.isfinite(logprob)) and logprob.min() > -100, logprob.min()
    mean, log_std = torch.chunk(actor.distribution_parameters(obs), 2, dim=-1)
    # recompute from the pre-tanh sample the transform cached
    u = torch.atanh(actions.double().clamp(-1 + 1e-12, 1 - 1e-12))
    finite = torch.all(actions.abs() < 1 - 1e-6, dim=-1)  # where float64 can still invert the tanh
    expected = torch.distributions.Normal(mean.double(), log_std.double().exp()).log_prob(u).sum(-1)
    expected -= torch.log1p(-torch.tanh(u).square()).sum(-1)
    assert torch.allclose(logprob.double()[finite], expected[finite], atol=1e-2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--set", "sac.buffer_size=16"],
            "sac.buffer_size = 16: a learner receives up to 1024 transitions per iteration here (512 decisions and "
            "their mirror images)",
        ),
        (
            [
                "--resume",
                str(EXPERIMENTS.parent / "models" / "walk" / "checkpoint.pt"),
                "--set",
                "sac.hidden_sizes=[64]",
            ],
            "checkpoint does not fit this config: sac.hidden_sizes [128, 128] vs [64]",
        ),
    ],
)
def test_sac_settings_that_cannot_work_are_refused_in_one_line_before_anything_is_written(extra, message, tmp_path):
    run_dir = tmp_path / "run"
    recipe = str(EXPERIMENTS / "recipes" / "walk-sac.toml")
    result = run([LRUN, "train", recipe, *sets(f"run.run_dir={run_dir}"), *extra])
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0 and not run_dir.exists()
