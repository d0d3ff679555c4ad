"""Behavioural cloning: a new network learns to imitate a trained policy on stored states (no MPI, no env).

The states come from the trained policy's own trajectories (the HDF5 store); the targets are the trained policy's
action distributions at those states, recomputed from its checkpoint (so they are the final policy's, not the
noisy samples of the many policy versions that collected the data). The loss is the mean
KL(teacher || student) of the action distributions, plus `value_coef` times the mean squared difference of the
critics (a warm start for the value function). A held-out share of the states measures generalisation.

Across distribution families (a SAC teacher's squashed Gaussian, a PPO student's Gaussian) there is no KL in
closed form: the student's deterministic action then learns the teacher's, as excitations in [0, 1] (mean squared
difference), and its exploration noise stays as configured.
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


def unit_actions(policy: Policy, raw: torch.Tensor) -> torch.Tensor:
    """Raw actions as excitations in [0, 1] units (`Policy.env_action` for the unit box, without the clip)."""
    return raw if policy.distribution_name == "beta" else (raw + 1.0) / 2.0


def imitation_losses(
    student: Policy,
    obs: torch.Tensor,
    target_parameters: torch.Tensor,
    target_values: torch.Tensor,
    target_actions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(imitation loss, mean squared value difference) on a batch: the mean KL(teacher || student), or, given the
    teacher's deterministic actions in unit excitations (`target_actions`, across distribution families), the
    mean squared difference of the student's from them."""
    if target_actions is None:
        teacher = student.distribution_from(target_parameters)
        loss = kl_divergence(teacher, student.distribution(obs)).mean()
    else:
        mine = unit_actions(student, student.mode_of(student.distribution_parameters(obs)))
        loss = ((mine - target_actions) ** 2).sum(dim=-1).mean()
    value_mse = ((student.value(obs) - target_values) ** 2).mean()
    return loss, value_mse


def pick(values: torch.Tensor | None, idx: torch.Tensor | np.ndarray) -> torch.Tensor | None:
    """values[idx], or None."""
    return None if values is None else values[idx]


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
    same_family = student.distribution_name == teacher.distribution_name
    if same_family:
        copy_exploration_noise(student, teacher)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(obs))
    n_hold = max(1, round(settings.holdout_fraction * len(obs))) if settings.holdout_fraction > 0 else 0
    obs_t = torch.as_tensor(obs, dtype=torch.float32)
    params_t, values_t = teacher_targets(teacher, obs_t)
    actions_t = None if same_family else unit_actions(teacher, teacher.mode_of(params_t))
    hold, train = order[:n_hold], order[n_hold:]
    optimizer = torch.optim.Adam(trainable_parameters(student), lr=settings.learning_rate)

    def evaluate(idx: np.ndarray) -> tuple[float, float]:
        if len(idx) == 0:
            return float("nan"), float("nan")
        with torch.no_grad():
            kl, mse = imitation_losses(student, obs_t[idx], params_t[idx], values_t[idx], pick(actions_t, idx))
        return float(kl), float(mse)

    history = []
    for epoch in range(settings.epochs + 1):
        if epoch > 0:
            shuffled = rng.permutation(train)
            for start in range(0, len(shuffled), settings.minibatch_size):
                idx = torch.as_tensor(shuffled[start : start + settings.minibatch_size])
                kl, mse = imitation_losses(student, obs_t[idx], params_t[idx], values_t[idx], pick(actions_t, idx))
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
