"""Mirror-symmetry augmentation of a PPO batch (torch and numpy only: no MPI, no opensim).

A planar skeleton with its legs swapped is the same skeleton, so a step (o, a) with advantage A is also
evidence that the mirrored action is as good in the mirrored state: the 2017 winner doubled every batch that
way. The mirrored samples' old log-probabilities and values come from the pre-update policy at the mirrored
observations, so their PPO ratio starts at 1 like everyone else's.
"""

from __future__ import annotations

import numpy as np
import torch

from lrun.learn.policy import Policy
from lrun.learn.ppo import Batch


def mirror_normalised(obs: torch.Tensor, perm: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """Mirror normalised observations: undo the normalisation, permute, normalise again (exact, unclipped)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float64)
    std_t = torch.as_tensor(std, dtype=torch.float64)
    raw = obs.double() * std_t + mean_t
    return ((raw[:, perm] - mean_t) / std_t).float()


@torch.no_grad()
def mirrored_batch(
    batch: Batch, policy: Policy, obs_perm: np.ndarray, act_perm: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> Batch:
    """`batch` followed by its mirror image (twice the samples); advantages and returns are shared."""
    obs = mirror_normalised(batch.obs, obs_perm, mean, std)
    actions = batch.actions[:, act_perm]
    logprobs = policy.distribution(obs).log_prob(actions)
    values = policy.value(obs)
    return Batch(
        torch.cat([batch.obs, obs]),
        torch.cat([batch.actions, actions]),
        torch.cat([batch.logprobs, logprobs]),
        torch.cat([batch.advantages, batch.advantages]),
        torch.cat([batch.returns, batch.returns]),
        torch.cat([batch.values, values]),
    )
