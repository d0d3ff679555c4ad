"""Mirror-symmetry augmentation of a PPO batch (torch and numpy only: no MPI, no opensim).

A planar skeleton with its legs swapped is the same skeleton, so a step (o, a) with advantage A is also
evidence that the mirrored action is as good in the mirrored state: the 2017 winner doubled every batch that
way. The mirrored samples' old log-probabilities and values come from the pre-update policy at the mirrored
observations, so their PPO ratio starts at 1 like everyone else's.

A policy trained on every mirrored sample becomes mirror-symmetric, and a symmetric deterministic policy
cannot leave a symmetric state: the task starts with both legs in the same pose, so it would move both
legs alike for ever (a shuffle or a hop, never a step). `min_asymmetry` keeps states that are (nearly) their
own mirror image out of the augmentation, so the policy is free to break the symmetry there.

The augmented samples are only valid PPO data if the policy is nearly symmetric already: for an asymmetric one
the mirrored excitations lie far in the tail of the policy at the mirrored state (measured on models/walk:
20-700 nats below the original sample's log-probability), their gradients dominate the update and approx KL
explodes. `symmetry_loss` (Yu, Turk & Liu 2018) asks for symmetry directly instead: the squared difference
between the policy's mean excitations at a state and the mirrored means at its mirror image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lrun.learn.policy import Policy
from lrun.learn.ppo import Batch


@dataclass(frozen=True)
class Mirror:
    """How to mirror a batch of normalised observations and the excitations."""

    obs_perm: np.ndarray
    act_perm: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min_asymmetry: float = 0.0


def mirror_normalised(obs: torch.Tensor, perm: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """Mirror normalised observations: undo the normalisation, permute, normalise again (exact, unclipped)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float64)
    std_t = torch.as_tensor(std, dtype=torch.float64)
    raw = obs.double() * std_t + mean_t
    return ((raw[:, perm] - mean_t) / std_t).float()


def asymmetry(obs: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Per sample: RMS difference between normalised observations and their mirror images (in standard
    deviations of the normaliser); 0 for a state that is its own mirror image, such as the task's start."""
    return (obs - mirrored).square().mean(dim=-1).sqrt()


@torch.no_grad()
def mirrored_batch(batch: Batch, policy: Policy, mirror: Mirror) -> Batch:
    """`batch` followed by the mirror image of its samples whose `asymmetry` is at least
    `mirror.min_asymmetry` (all of them at 0: twice the samples); advantages and returns are shared."""
    obs = mirror_normalised(batch.obs, mirror.obs_perm, mirror.mean, mirror.std)
    keep = torch.nonzero(asymmetry(batch.obs, obs) >= mirror.min_asymmetry).squeeze(-1)
    obs = obs[keep]
    actions = batch.actions[keep][:, torch.as_tensor(mirror.act_perm)]
    logprobs = policy.distribution(obs).log_prob(actions)
    values = policy.value(obs)
    return Batch(
        torch.cat([batch.obs, obs]),
        torch.cat([batch.actions, actions]),
        torch.cat([batch.logprobs, logprobs]),
        torch.cat([batch.advantages, batch.advantages[keep]]),
        torch.cat([batch.returns, batch.returns[keep]]),
        torch.cat([batch.values, values]),
    )


def symmetry_loss(policy: Policy, obs: torch.Tensor, mirror: Mirror) -> torch.Tensor:
    """Mean over the (asymmetric enough) samples of the squared distance between the policy's deterministic
    action at each state and the mirror image of its action at the mirrored state (sum over excitations, in
    raw units within the env's range: Gaussian [-1, 1], Beta [0, 1]); differentiable through both."""
    with torch.no_grad():
        mirrored = mirror_normalised(obs, mirror.obs_perm, mirror.mean, mirror.std)
        keep = torch.nonzero(asymmetry(obs, mirrored) >= mirror.min_asymmetry).squeeze(-1)
    if len(keep) == 0:
        return torch.zeros(())
    here = effective_action(policy, policy.mode(obs[keep]))
    there = effective_action(policy, policy.mode(mirrored[keep]))[:, torch.as_tensor(mirror.act_perm)]
    return (here - there).square().sum(dim=-1).mean()


def effective_action(policy: Policy, raw: torch.Tensor) -> torch.Tensor:
    """Raw actions as far as they matter: a Gaussian's beyond [-1, 1] are clipped by the env anyway, so a
    difference out there is no asymmetry (and gets no gradient)."""
    return raw.clamp(-1.0, 1.0) if policy.distribution_name == "gaussian" else raw
