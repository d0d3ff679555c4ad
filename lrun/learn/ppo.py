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
    target_kl: float = 0.0
    """Stop the epochs once a minibatch's approx KL (averaged over learners) exceeds 1.5 x this; 0: never."""


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
        old_approx_kl = (-log_ratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return {
        "pg_loss": pg_loss,
        "v_loss": v_loss,
        "entropy": entropy,
        "approx_kl": approx_kl,
        "old_approx_kl": old_approx_kl,
        "clipfrac": clipfrac,
    }


def average_gradients(params: list[torch.Tensor], reduce: Callable[[np.ndarray], None], *extras: float) -> list[float]:
    """Average the gradients of `params` over learners in place with one `reduce` call (a flat Allreduce-mean),
    `extras` riding along at the end of the vector; returns the averaged extras."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([*(g.reshape(-1) for g in grads), torch.tensor(extras, dtype=torch.float32)]).numpy()
    reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(torch.from_numpy(flat[offset : offset + g.numel()]).reshape(g.shape))
        offset += g.numel()
    return flat[offset:].tolist()


class PPOUpdater:
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
        #: an extra loss on each minibatch's observations, already weighted (a symmetry loss), or None
        self.extra_loss: Callable[[torch.Tensor], torch.Tensor] | None = None

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the learner: the optimiser."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Inverse of `state_dict`."""
        self.optimizer.load_state_dict(state)

    def set_learning_rate(self, lr: float) -> None:
        """Set the optimiser's learning rate (for schedules)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def update(self, batch: Batch) -> dict[str, float]:
        """Several epochs of minibatch steps over `batch`; returns mean losses and diagnostics."""
        s = self.settings
        n = len(batch)
        if n < s.minibatches:
            raise ValueError(f"batch of {n} samples cannot be split into {s.minibatches} minibatches")
        advantages = batch.advantages
        sums: dict[str, float] = {}
        count = steps = 0
        stopped = False
        # An early stop decides on the KL averaged over learners (it travels with the gradients): a learner
        # stopping on its own KL would leave the others waiting in the gradient Allreduce.
        for _epoch in range(s.epochs):
            if stopped:
                break
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
                if self.extra_loss is not None:
                    extra = self.extra_loss(mb.obs)
                    loss = loss + extra
                    losses["extra_loss"] = extra
                self.optimizer.zero_grad()
                loss.backward()
                approx_kl = float(losses["approx_kl"])
                if self.reduce_gradients is not None:
                    # the KL travels with the gradients, so every learner takes the same early-stop decision
                    params = [p for p in trainable_parameters(self.policy) if p.grad is not None]
                    approx_kl = average_gradients(params, self.reduce_gradients, approx_kl)[0]
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                count += 1
                if s.target_kl > 0 and approx_kl > 1.5 * s.target_kl:
                    # the policy has already left the trust region: no further step this iteration
                    stopped = True
                    break
                nn.utils.clip_grad_norm_(trainable_parameters(self.policy), s.max_grad_norm)
                self.optimizer.step()
                steps += 1
        metrics = {key: value / count for key, value in sums.items()}
        metrics["updates"] = float(steps)
        with torch.no_grad():
            y_true, y_pred = batch.returns.numpy(), batch.values.numpy()
            var = np.var(y_true)
            metrics["explained_variance"] = float("nan") if var == 0 else float(1 - np.var(y_true - y_pred) / var)
        return metrics
