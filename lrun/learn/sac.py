"""Soft actor-critic (Haarnoja et al. 2018, with the entropy temperature tuned to a target) on the same
rollouts PPO learns from, for sample efficiency: every transition stays in a replay buffer and is learnt from
many times (off-policy; the 2017 entries that learnt fastest were off-policy too).

Maths only (torch, numpy): the MPI side hands in a `reduce_gradients` callback, as for PPO.

* The actor is an `ActorCritic` with the `squashed` distribution: a Gaussian whose tanh is the action in
  (-1, 1), so simulators, `lrun eval` and the store treat it like any other policy; its value head is unused.
* Two Q networks and their Polyak-averaged targets; the soft Bellman target is
  r + gamma * (1 - terminated) * (min_i Q'_i(s', a') - alpha * log pi(a'|s')) with a' ~ pi(.|s').
* The buffer keeps observations as features before normalisation and normalises them when it samples, with
  the run's current statistics, so stale statistics never enter a target.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lrun.learn.policy import INPUT_CLIP, ActorCritic, mlp
from lrun.learn.ppo import average_gradients
from lrun.learn.transfer import carry_mlp, zero_input_columns


@dataclass
class SACSettings:
    """The SAC hyper-parameters (the `[sac]` config section)."""

    learning_rate: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    init_alpha: float = 0.2
    target_entropy: float = -1.0  # per action dimension (SAC's -dim(A) heuristic at 1.0)
    reward_scale: float = 1.0
    hidden_sizes: Sequence[int] = (256, 256)


class ReplayBuffer:
    """A ring buffer of transitions (observation features before normalisation, raw actions in (-1, 1))."""

    def __init__(self, capacity: int, obs_size: int, act_size: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_size), np.float32)
        self.next_obs = np.zeros((capacity, obs_size), np.float32)
        self.actions = np.zeros((capacity, act_size), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.size = 0
        self.cursor = 0
        self.added = 0  # transitions ever added (what a sync of the buffer's file has yet to write)
        self.collected = 0  # of those, the ones simulators collected (not mirror images)
        self.rng = np.random.default_rng(seed)

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        collected: bool = True,
    ) -> None:
        """Append a batch of transitions, overwriting the oldest once full; `collected=False` for transitions
        made from others (mirror images), which the warm-up does not count."""
        n = len(obs)
        if n > self.capacity:
            raise ValueError(f"{n} transitions do not fit a buffer of {self.capacity}")
        where = (self.cursor + np.arange(n)) % self.capacity
        self.obs[where], self.actions[where], self.rewards[where] = obs, actions, rewards
        self.next_obs[where], self.terminated[where] = next_obs, terminated
        self.cursor = int((self.cursor + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        self.added += n
        if collected:
            self.collected += n

    def sample(self, n: int) -> tuple[np.ndarray, ...]:
        """n transitions drawn uniformly (with replacement): obs, actions, rewards, next_obs, terminated."""
        if self.size == 0:
            raise ValueError("cannot sample an empty replay buffer")
        i = self.rng.integers(0, self.size, n)
        return self.obs[i], self.actions[i], self.rewards[i], self.next_obs[i], self.terminated[i]


class TwinQ(nn.Module):
    """Two independent Q(s, a) networks."""

    def __init__(self, obs_size: int, act_size: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        sizes = [obs_size + act_size, *hidden_sizes, 1]
        self.q1 = mlp(sizes, "relu", out_gain=1.0)
        self.q2 = mlp(sizes, "relu", out_gain=1.0)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both Q values, shape (batch,) each."""
        x = torch.cat([obs.clamp(-INPUT_CLIP, INPUT_CLIP), actions], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class SACUpdater:
    """Trains a squashed-Gaussian `ActorCritic` (the actor) with twin critics it owns; identical on every learner
    rank given identical averaged gradients."""

    def __init__(
        self,
        actor: ActorCritic,
        settings: SACSettings,
        reduce_gradients: Callable[[np.ndarray], None] | None = None,
        seed: int = 0,
        buffer_size: int = 1_000_000,
        sample_seed: int | None = None,
    ) -> None:
        """`seed` initialises the critics (the same on every learner: they train one pair of critics by averaged
        gradients); `sample_seed` (default `seed`) draws this learner's minibatches from its own buffer."""
        if actor.distribution_name != "squashed":
            raise ValueError(f"SAC trains a squashed Gaussian policy, not a {actor.distribution_name!r} one")
        self.actor = actor
        self.settings = settings
        self.reduce_gradients = reduce_gradients
        torch.manual_seed(seed)
        self.critic = TwinQ(actor.obs_size, actor.act_size, settings.hidden_sizes)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(float(np.log(settings.init_alpha)), requires_grad=True)
        self.target_entropy = settings.target_entropy * actor.act_size
        lr = settings.learning_rate
        # the policy's own network (a blend's new network: its frozen one has no gradients), not its value head
        actor_params = [
            p for name, p in actor.named_parameters() if p.requires_grad and name.split(".")[-3:-2] == ["actor"]
        ]
        self.actor_optimizer = adam(actor_params, lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr)
        self.alpha_optimizer = adam([self.log_alpha], lr)
        self.actor_params = actor_params
        self.buffer = ReplayBuffer(
            buffer_size, actor.obs_size, actor.act_size, seed if sample_seed is None else sample_seed
        )
        self.rng = self.buffer.rng  # checkpointed with the run, like PPO's minibatch order
        self.stitcher = TransitionStitcher()

    def _sample_actions(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised actions in (-1, 1) and their log-probabilities.

        The log-probability must be taken of the very tensor `rsample` returned: the tanh transform then uses the
        cached Gaussian sample and its stable log-det-Jacobian. Clamping first made it invert tanh of a clamped
        value instead, which for a saturated tanh gave log-probabilities of -1e8: the critics' targets, then
        the critics, blew up (measured: Q from 37 to 3e4 in two iterations)."""
        dist = self.actor.distribution(obs)
        actions = dist.rsample()
        return actions, dist.log_prob(actions)

    def _step(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss.backward()
        if self.reduce_gradients is not None:
            average_gradients(params, self.reduce_gradients)
        optimizer.step()

    def update(
        self,
        n_updates: int,
        normalise: Callable[[np.ndarray], np.ndarray],
        actor: bool = True,
        temperature: bool = True,
    ) -> dict[str, float]:
        """`n_updates` gradient steps of critics, actor and temperature on minibatches from the replay buffer
        (of the critics alone where `actor` is False: a critic warm-up; the temperature held where `temperature`
        is False); `normalise` maps stored features to the networks' inputs. Returns mean losses and
        diagnostics."""
        s = self.settings
        buffer = self.buffer
        sums = {"q_loss": 0.0, "actor_loss": 0.0, "alpha": 0.0, "entropy": 0.0, "q_mean": 0.0}
        for _ in range(n_updates):
            obs, actions, rewards, next_obs, terminated = buffer.sample(s.batch_size)
            obs_t = torch.as_tensor(normalise(obs))
            next_t = torch.as_tensor(normalise(next_obs))
            actions_t = torch.as_tensor(actions)
            alpha = self.log_alpha.exp().detach()
            with torch.no_grad():
                next_actions, next_logprob = self._sample_actions(next_t)
                q1_next, q2_next = self.target(next_t, next_actions)
                soft = torch.min(q1_next, q2_next) - alpha * next_logprob
                target = (
                    torch.as_tensor(rewards * s.reward_scale) + s.gamma * (1.0 - torch.as_tensor(terminated)) * soft
                )
            q1, q2 = self.critic(obs_t, actions_t)
            q_loss = 0.5 * ((q1 - target) ** 2).mean() + 0.5 * ((q2 - target) ** 2).mean()
            self._step(self.critic_optimizer, list(self.critic.parameters()), q_loss)
            if actor:
                self._actor_and_temperature_step(obs_t, alpha, sums, temperature)
            with torch.no_grad():  # Polyak averaging, one fused call over all the tensors
                torch._foreach_lerp_(list(self.target.parameters()), list(self.critic.parameters()), s.tau)
            sums["q_loss"] += float(q_loss.detach())
            sums["alpha"] += float(alpha)
            sums["q_mean"] += float(q1.detach().mean())
        metrics = {key: value / max(n_updates, 1) for key, value in sums.items()}
        if not actor:  # the actor took no step: no actor loss or entropy estimate to report
            metrics["actor_loss"] = metrics["entropy"] = float("nan")
        metrics["updates"] = float(n_updates)
        return metrics

    def _actor_and_temperature_step(
        self, obs_t: torch.Tensor, alpha: torch.Tensor, sums: dict[str, float], temperature: bool = True
    ) -> None:
        """One gradient step of the actor (through the critics, which keep no gradient of it) and, where
        `temperature`, one of the temperature towards the target entropy; adds their losses to `sums`."""
        new_actions, logprob = self._sample_actions(obs_t)
        # the actor's gradient passes through the critics, which need none of their own from it: frozen for the
        # pass, their weight gradients are not even computed (~10 % of an update's work)
        self.critic.requires_grad_(False)
        try:
            q1_pi, q2_pi = self.critic(obs_t, new_actions)
        finally:
            self.critic.requires_grad_(True)
        actor_loss = (alpha * logprob - torch.min(q1_pi, q2_pi)).mean()
        auxiliary = self.actor.auxiliary_loss(obs_t)  # a blend's distillation of its frozen policy
        loss = actor_loss
        if auxiliary is not None:
            sums["auxiliary_loss"] = sums.get("auxiliary_loss", 0.0) + float(auxiliary.detach())
            loss = actor_loss + auxiliary
        self._step(self.actor_optimizer, self.actor_params, loss)

        if temperature:
            alpha_loss = -(self.log_alpha * (logprob.detach() + self.target_entropy)).mean()
            self._step(self.alpha_optimizer, [self.log_alpha], alpha_loss)
        sums["actor_loss"] += float(actor_loss.detach())
        sums["entropy"] -= float(logprob.detach().mean())

    @torch.no_grad()
    def start_from(self, source: dict, new_inputs: np.ndarray) -> str:
        """Begin from the critics, targets and temperature of a trained SAC run (`source` is its `state_dict`):
        copied, or widened where this run's critics are wider (`lrun.learn.transfer`); inputs in `new_inputs`
        (features the source never saw vary) get zero weight. Optimisers start afresh. Returns "copied" or
        "widened"; ValueError where the critics do not fit (another depth, narrower)."""
        how = "copied"
        for net, key in ((self.critic, "critic"), (self.target, "target")):
            for name in ("q1", "q2"):
                part = {k.removeprefix(f"{name}."): v for k, v in source[key].items() if k.startswith(f"{name}.")}
                how = carry_mlp(part, getattr(net, name))
                zero_input_columns(getattr(net, name), new_inputs)
        self.log_alpha.copy_(source["log_alpha"])
        return how

    def sync_vector(self) -> np.ndarray:
        """Critics, targets and temperature in one float64 vector: what learners must hold identically."""
        tensors = [*self.critic.parameters(), *self.target.parameters(), self.log_alpha.reshape(1)]
        return torch.cat([t.detach().reshape(-1) for t in tensors]).double().numpy()

    def state_dict(self) -> dict:
        """Critics, targets, temperature and optimisers (the actor is checkpointed as the run's policy)."""
        return {
            "critic": self.critic.state_dict(),
            "target": self.target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Inverse of `state_dict`."""
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        for name in ("actor_optimizer", "critic_optimizer", "alpha_optimizer"):
            optimizer = getattr(self, name)
            optimizer.load_state_dict(state[name])
            for group in optimizer.param_groups:  # a checkpoint's settings replace ours, of an older lrun too
                group["fused"], group["foreach"] = True, None


def adam(params: Iterable[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel: one pass over all the tensors per step, the same update (~7 % of a SAC update's
    CPU time against the per-tensor loop)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


class TransitionStitcher:
    """Turns the rollouts of the same envs, one iteration after another, into complete transitions
    (s_t, a_t, r_t, s_t+1, terminated_t).

    Within a rollout, s_t+1 is the next row (after an episode's end the next row is the new episode's first
    state, which a terminated step never bootstraps from). A rollout's last step waits for the next rollout,
    whose first row is its next state. A step truncated at the time limit is left out: its next state, the
    final observation, does not travel with the rollout (one transition in 1000 / frame skip).
    """

    def __init__(self) -> None:
        self.pending: dict[int, tuple[np.ndarray, ...]] = {}

    def transitions(
        self,
        source: int,
        features: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> tuple[np.ndarray, ...]:
        """This rollout's (steps, envs, ...) arrays from `source` (a simulator) as flat transitions."""
        n_obs, n_act = features.shape[-1], actions.shape[-1]
        obs = [features[:-1].reshape(-1, n_obs)]
        acts = [actions[:-1].reshape(-1, n_act)]
        rews = [rewards[:-1].reshape(-1)]
        nxt = [features[1:].reshape(-1, n_obs)]
        terms = [terminated[:-1].reshape(-1)]
        keep = [~truncated[:-1].reshape(-1)]
        if source in self.pending:
            p_obs, p_act, p_rew, p_term, p_trunc = self.pending[source]
            obs.insert(0, p_obs)
            acts.insert(0, p_act)
            rews.insert(0, p_rew)
            nxt.insert(0, features[0])
            terms.insert(0, p_term)
            keep.insert(0, ~p_trunc)
        self.pending[source] = (features[-1], actions[-1], rewards[-1], terminated[-1], truncated[-1])
        mask = np.concatenate(keep)
        return (
            np.concatenate(obs)[mask],
            np.concatenate(acts)[mask],
            np.concatenate(rews)[mask],
            np.concatenate(nxt)[mask],
            np.concatenate(terms)[mask].astype(np.float32),
        )
