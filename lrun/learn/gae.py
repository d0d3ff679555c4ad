"""Generalised advantage estimation that tells a time limit (truncated) from a real end (terminated)."""

from __future__ import annotations

import numpy as np


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    final_values: np.ndarray,
    next_value: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns for a rollout of shape (steps, envs).

    `values[t]` is V(s_t). Where an episode ended at step t, the env was reset, so s_{t+1} is a new episode:
    if it was *terminated*, the future is worth 0; if *truncated* (time limit), the future is worth
    V(final observation) = `final_values[t]` (the value is bootstrapped, the state was not terminal).
    Either way the lambda-chain stops there. `next_value` is V of the observation after the last step.
    """
    steps = rewards.shape[0]
    advantages = np.zeros_like(rewards, dtype=np.float64)
    last = np.zeros(rewards.shape[1:], dtype=np.float64)
    for t in reversed(range(steps)):
        following = next_value if t == steps - 1 else values[t + 1]
        ended = np.logical_or(terminated[t], truncated[t])
        bootstrap = np.where(terminated[t], 0.0, np.where(truncated[t], final_values[t], following))
        delta = rewards[t] + gamma * bootstrap - values[t]
        last = delta + gamma * lam * np.where(ended, 0.0, last)
        advantages[t] = last
    return advantages, advantages + values
