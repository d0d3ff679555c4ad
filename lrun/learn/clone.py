"""Behavioural cloning: a new network learns to imitate a trained policy on stored states (no MPI, no env).

The states come from the trained policy's own trajectories (the HDF5 store); the targets are the trained policy's
action distributions at those states, recomputed from its checkpoint (so they are the final policy's, not the
noisy samples of the many policy versions that collected the data). The loss is the mean
KL(teacher || student) of the action distributions, plus `value_coef` times the mean squared difference of the
critics (a warm start for the value function). A held-out share of the states measures generalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import kl_divergence

from lrun.learn.policy import Policy, trainable_parameters


@dataclass
class CloneSettings:
    """Hyper-parameters of the imitation phase."""

    epochs: int = 20
    minibatch_size: int = 256
    learning_rate: float = 1e-3
    value_coef: float = 0.5
    holdout_fraction: float = 0.1


@torch.no_grad()
def teacher_targets(teacher: Policy, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's distribution parameters and values at these (normalised) observations."""
    return teacher.distribution_parameters(obs), teacher.value(obs)


@torch.no_grad()
def copy_exploration_noise(student: Policy, teacher: Policy) -> None:
    """A Gaussian student's state-independent log std := the teacher's (learning it by gradient takes ages)."""
    log_std = getattr(student, "log_std", None)
    if student.distribution_name == "gaussian" and isinstance(log_std, torch.nn.Parameter):
        parameters = teacher.distribution_parameters(torch.zeros(1, teacher.obs_size))
        log_std.copy_(parameters[0, teacher.act_size :])


def imitation_losses(
    student: Policy, obs: torch.Tensor, target_parameters: torch.Tensor, target_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean KL(teacher || student), mean squared value difference) on a batch."""
    teacher = student.distribution_from(target_parameters)
    kl = kl_divergence(teacher, student.distribution(obs)).mean()
    value_mse = ((student.value(obs) - target_values) ** 2).mean()
    return kl, value_mse


def clone_policy(
    student: Policy,
    teacher: Policy,
    obs: np.ndarray,
    settings: CloneSettings,
    seed: int = 0,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train `student` to imitate `teacher` on `obs` (normalised the way both see them).

    Returns one row per epoch (epoch 0 = before training): train and held-out KL and value error.
    Deterministic for a given seed, so learner ranks that clone side by side end up identical.
    """
    if len(obs) < 2:
        raise ValueError(f"behavioural cloning needs stored states; got {len(obs)}")
    copy_exploration_noise(student, teacher)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(obs))
    n_hold = max(1, round(settings.holdout_fraction * len(obs))) if settings.holdout_fraction > 0 else 0
    obs_t = torch.as_tensor(obs, dtype=torch.float32)
    params_t, values_t = teacher_targets(teacher, obs_t)
    hold, train = order[:n_hold], order[n_hold:]
    optimizer = torch.optim.Adam(trainable_parameters(student), lr=settings.learning_rate)

    def evaluate(idx: np.ndarray) -> tuple[float, float]:
        if len(idx) == 0:
            return float("nan"), float("nan")
        with torch.no_grad():
            kl, mse = imitation_losses(student, obs_t[idx], params_t[idx], values_t[idx])
        return float(kl), float(mse)

    history = []
    for epoch in range(settings.epochs + 1):
        if epoch > 0:
            shuffled = rng.permutation(train)
            for start in range(0, len(shuffled), settings.minibatch_size):
                idx = torch.as_tensor(shuffled[start : start + settings.minibatch_size])
                kl, mse = imitation_losses(student, obs_t[idx], params_t[idx], values_t[idx])
                loss = kl + settings.value_coef * mse
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        train_kl, train_mse = evaluate(train)
        hold_kl, hold_mse = evaluate(hold)
        row = {
            "epoch": epoch,
            "train_kl": train_kl,
            "holdout_kl": hold_kl,
            "train_value_mse": train_mse,
            "holdout_value_mse": hold_mse,
        }
        history.append(row)
        if progress is not None:
            progress(row)
    return history
