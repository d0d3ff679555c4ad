"""Proximal policy optimisation: the update over one iteration's batch (CleanRL's naming).

MPI stays outside: the learner gets an optional `reduce_gradients` callback that averages a flat gradient
vector across learner ranks in place (one Allreduce per minibatch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lrun.learn.policy import ActorCritic, trainable_parameters


@dataclass
class PPOSettings:
    """The PPO hyper-parameters the update needs (a subset of the training config)."""

    learning_rate: float = 3e-4
    epochs: int = 10
    minibatches: int = 32
    clip_coef: float = 0.2
    clip_value_loss: bool = False
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalise_advantages: bool = True


@dataclass
class Batch:
    """One learner's flattened batch (b_ prefix in CleanRL): tensors of shape (n, ...)."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor

    @classmethod
    def from_numpy(cls, **arrays: np.ndarray) -> Batch:
        """Batch from numpy arrays (converted to float32 tensors)."""
        return cls(**{k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in arrays.items()})

    def __len__(self) -> int:
        return self.obs.shape[0]


def ppo_losses(policy: ActorCritic, mb: Batch, clip_coef: float, clip_value_loss: bool) -> dict[str, torch.Tensor]:
    """Clipped policy loss, value loss, entropy and diagnostics on one minibatch (advantages as given)."""
    dist = policy.distribution(mb.obs)
    new_logprob = dist.log_prob(mb.actions)
    entropy = dist.entropy().mean()
    log_ratio = new_logprob - mb.logprobs
    ratio = log_ratio.exp()
    pg_loss = torch.max(-mb.advantages * ratio, -mb.advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    new_value = policy.value(mb.obs)
    if clip_value_loss:
        clipped = mb.values + (new_value - mb.values).clamp(-clip_coef, clip_coef)
        v_loss = 0.5 * torch.max((new_value - mb.returns) ** 2, (clipped - mb.returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((new_value - mb.returns) ** 2).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return {"pg_loss": pg_loss, "v_loss": v_loss, "entropy": entropy, "approx_kl": approx_kl, "clipfrac": clipfrac}


class PPOLearner:
    """Runs the PPO update on a policy; identical on every learner rank given identical gradients."""

    def __init__(
        self,
        policy: ActorCritic,
        settings: PPOSettings,
        reduce_gradients: Callable[[np.ndarray], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.optimizer = torch.optim.Adam(trainable_parameters(policy), lr=settings.learning_rate, eps=1e-5)
        self.reduce_gradients = reduce_gradients
        self.rng = np.random.default_rng(seed)

    def set_learning_rate(self, lr: float) -> None:
        """Set the optimiser's learning rate (for schedules)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _average_gradients(self) -> None:
        params = [p for p in trainable_parameters(self.policy) if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params]).numpy()  # a copy: grads are not contiguous as one
        self.reduce_gradients(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(torch.from_numpy(flat[offset : offset + n]).reshape(p.shape))
            offset += n

    def update(self, batch: Batch) -> dict[str, float]:
        """Several epochs of minibatch steps over `batch`; returns mean losses and diagnostics."""
        s = self.settings
        n = len(batch)
        if n < s.minibatches:
            raise ValueError(f"batch of {n} samples cannot be split into {s.minibatches} minibatches")
        advantages = batch.advantages
        sums: dict[str, float] = {}
        count = 0
        # A fixed number of epochs and minibatches on every learner: an early stop on a learner's own KL could
        # leave the others waiting in the gradient Allreduce.
        for _epoch in range(s.epochs):
            order = self.rng.permutation(n)
            for idx in np.array_split(order, s.minibatches):
                mb_idx = torch.as_tensor(idx)
                mb_adv = advantages[mb_idx]
                if s.normalise_advantages and len(idx) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                mb = Batch(
                    batch.obs[mb_idx],
                    batch.actions[mb_idx],
                    batch.logprobs[mb_idx],
                    mb_adv,
                    batch.returns[mb_idx],
                    batch.values[mb_idx],
                )
                losses = ppo_losses(self.policy, mb, s.clip_coef, s.clip_value_loss)
                entropy_loss = losses["entropy"]
                loss = losses["pg_loss"] - s.ent_coef * entropy_loss + s.vf_coef * losses["v_loss"]
                auxiliary = self.policy.auxiliary_loss(mb.obs)  # a blend's distillation of its frozen policy
                if auxiliary is not None:
                    loss = loss + auxiliary
                    losses["auxiliary_loss"] = auxiliary
                self.optimizer.zero_grad()
                loss.backward()
                if self.reduce_gradients is not None:
                    self._average_gradients()
                nn.utils.clip_grad_norm_(trainable_parameters(self.policy), s.max_grad_norm)
                self.optimizer.step()
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                count += 1
        metrics = {key: value / count for key, value in sums.items()}
        with torch.no_grad():
            y_true, y_pred = batch.returns.numpy(), batch.values.numpy()
            var = np.var(y_true)
            metrics["explained_variance"] = float("nan") if var == 0 else float(1 - np.var(y_true - y_pred) / var)
        return metrics
