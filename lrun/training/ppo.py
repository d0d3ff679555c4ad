"""PPO in lrun's loop: the glue between the rollouts and the maths of `lrun.learn.ppo` (GAE per rollout, one flat
batch, the learning-rate schedule, mirrored batches and the symmetry loss)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from functools import partial
from typing import ClassVar

import numpy as np
import torch

from lrun.config import TrainConfig
from lrun.learn.gae import compute_gae
from lrun.learn.policy import Policy
from lrun.learn.ppo import Batch, PPOSettings, PPOUpdater
from lrun.learn.symmetry import Mirror, mirrored_batch, symmetry_loss
from lrun.rollout import Rollout
from lrun.training.algorithm import Algorithm
from lrun.training.state import TrainingState


class PPO(Algorithm):
    """Proximal policy optimisation (`[ppo]`): on-policy, every learner updates on its own simulators' rollouts
    of this iteration, with gradients averaged over the learners."""

    name = "ppo"
    scalars: ClassVar[dict[str, str]] = {
        "losses/policy_loss": "pg_loss",
        "losses/value_loss": "v_loss",
        "losses/entropy": "entropy",
        "losses/approx_kl": "approx_kl",
        "losses/old_approx_kl": "old_approx_kl",
        "charts/learning_rate": "learning_rate",
        "charts/policy_std": "policy_std",
        "losses/clipfrac": "clipfrac",
        "losses/updates": "updates",
        "losses/mirrored_fraction": "mirrored_fraction",
        "losses/symmetry_loss": "extra_loss",
        "losses/explained_variance": "explained_variance",
    }

    def build_updater(
        self, policy: Policy, reduce_gradients: Callable[[np.ndarray], None] | None, sample_seed: int
    ) -> PPOUpdater:
        """The PPO update over the `[ppo]` settings."""
        return PPOUpdater(policy, ppo_settings(self.config), reduce_gradients, seed=sample_seed)

    def learn(
        self, state: TrainingState, rollouts: list[Rollout], collected_with: tuple[np.ndarray, np.ndarray]
    ) -> dict[str, float]:
        """GAE and one batch over the rollouts (mirrored, or with the symmetry loss, where the config asks), then
        the epochs of minibatch steps at this iteration's learning rate."""
        ppo = self.config.ppo
        updater: PPOUpdater = state.updater
        lr = learning_rate(self.config, state.iteration)
        updater.set_learning_rate(lr)
        batch = rollouts_to_batch(rollouts, ppo.gamma, ppo.gae_lambda, ppo.reward_scale)
        n_collected = len(batch)
        # the mirror of the observations as the rollouts saw them (normalised with the statistics of their time)
        mirror = state.mirror(collected_with, ppo.mirror_min_asymmetry) if self.mirrors() else None
        if ppo.mirror:
            batch = mirrored_batch(batch, state.policy, mirror)
        if ppo.symmetry_loss > 0:
            updater.extra_loss = partial(weighted_symmetry_loss, state.policy, mirror, ppo.symmetry_loss)
        losses = updater.update(batch)
        losses["mirrored_fraction"] = len(batch) / n_collected - 1.0
        losses["learning_rate"] = lr
        log_std = getattr(state.policy, "log_std", None)
        if log_std is not None:  # the Gaussian's state-independent std, in [-1, 1] action units
            losses["policy_std"] = float(log_std.detach().exp().mean())
        return losses

    def mirrors(self) -> bool:
        """Mirrored batches (`ppo.mirror`) or the symmetry loss (`ppo.symmetry_loss`)."""
        return self.config.ppo.mirror or self.config.ppo.symmetry_loss > 0


def ppo_settings(config: TrainConfig) -> PPOSettings:
    """The subset of the config the PPO update needs."""
    return PPOSettings(**{f.name: getattr(config.ppo, f.name) for f in fields(PPOSettings)})


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """The scheduled learning rate at this iteration (0-based)."""
    if config.ppo.lr_schedule == "linear":
        return config.ppo.learning_rate * (1.0 - iteration / config.run.iterations)
    return config.ppo.learning_rate


def rollouts_to_batch(rollouts: list[Rollout], gamma: float, lam: float, reward_scale: float = 1.0) -> Batch:
    """GAE per rollout, then one flat batch over all of a learner's simulators."""
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("obs", "actions", "logprobs", "advantages", "returns", "values")
    }
    for r in rollouts:
        advantages, returns = compute_gae(
            r.rewards * reward_scale, r.values, r.terminated, r.truncated, r.final_values, r.next_value, gamma, lam
        )
        parts["obs"].append(r.obs.reshape(-1, r.obs.shape[-1]))
        parts["actions"].append(r.actions.reshape(-1, r.actions.shape[-1]))
        parts["logprobs"].append(r.logprobs.reshape(-1))
        parts["advantages"].append(advantages.reshape(-1))
        parts["returns"].append(returns.reshape(-1))
        parts["values"].append(r.values.reshape(-1))
    return Batch.from_numpy(**{k: np.concatenate(v) for k, v in parts.items()})


def weighted_symmetry_loss(policy: Policy, mirror: Mirror, weight: float, obs: torch.Tensor) -> torch.Tensor:
    """`weight` x the symmetry loss on a minibatch (PPOUpdater.extra_loss)."""
    return weight * symmetry_loss(policy, obs, mirror)
