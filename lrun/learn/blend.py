"""Policy blending: carry a trained policy into a bigger network without losing what it knows.

The trained policy F is frozen and a new network S (usually bigger) trains alongside it. Both give the
parameters of their action distribution, and the blended policy acts with

    theta(o) = (1 - c) * theta_F(x_F) + c * theta_S(x)

* theta is [mean, log std] for the Gaussian policy and [alpha, beta] for the Beta policy;
* c is the blend coefficient, scheduled by the config (`blend_coefficient`): linear from `start` to `end` over
  `ramp_iterations` iterations, then held;
* x is the raw observation o normalised by the run's running statistics, x_F the same o normalised by the
  statistics F was trained with (kept frozen with it), so F sees exactly the inputs it knows even while the
  run's statistics move on. The mapping works on unclipped values (collectors pass them so, and every network
  clips its own inputs to +-10 afterwards), so it is exact up to float rounding.

At c = 0 the blended policy is F exactly (bit for bit while the run's statistics equal F's); at c = 1 it is S
alone. On its own, S starts far from F (its outputs start near 0), so raising c would first pull the actions
towards 0 and undo what F knows. So while c < 1, S also distils F on the states the blend visits: PPO adds

    distill_coef * (1 - c) * mean KL(pi_F(.|o) || pi_S(.|o))

to its loss, with pi_S the new network's own distribution (not the blend's). S thus learns F's behaviour on
the states that matter, while PPO improves the blended policy; the term fades out as S takes over.

The value function is S's critic throughout: it is not behaviour, so it learns from the first iteration.
Gradients reach S only: F's parameters do not require gradients and F runs under `no_grad`. The policy
gradient reaching S is scaled by c, which Adam's step normalisation undoes, so S learns at the configured rate
even while c is small.

A blended policy is itself a `Policy`, so it trains, checkpoints and resumes like any other, and the next
stage can freeze it in turn (blends nest); once c = 1 the next stage can also take S alone (`student_of`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.distributions import kl_divergence

from lrun.learn.normaliser import RunningNormaliser, never_varied
from lrun.learn.policy import ActorCritic, Policy

_DEFAULTS = RunningNormaliser(1)


class BlendedPolicy(Policy):
    """A frozen policy blended with a trainable one (see the module docstring for the formula)."""

    def __init__(
        self,
        frozen: Policy,
        student: Policy,
        frozen_statistics: np.ndarray | None = None,
        epsilon: float = _DEFAULTS.epsilon,
    ) -> None:
        """`frozen_statistics`: the normaliser state vector [mean, var, count] F was trained with."""
        super().__init__()
        for name in ("obs_size", "act_size", "distribution_name"):
            if getattr(frozen, name) != getattr(student, name):
                raise ValueError(
                    f"cannot blend: the frozen policy's {name} is {getattr(frozen, name)!r}, "
                    f"the new network's {getattr(student, name)!r}"
                )
        self.obs_size, self.act_size, self.distribution_name = (
            student.obs_size,
            student.act_size,
            student.distribution_name,
        )
        self.frozen = frozen
        self.student = student
        self.frozen.requires_grad_(False)
        self.frozen.eval()
        self.epsilon = epsilon
        n = self.obs_size
        self.register_buffer("frozen_mean", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("frozen_var", torch.ones(n, dtype=torch.float64))
        self.register_buffer("coefficient", torch.zeros((), dtype=torch.float32))
        self.distill_coef = 0.0  # set with the coefficient (`set_coefficient`); not state: the config decides
        if frozen_statistics is not None:
            self.set_frozen_statistics(frozen_statistics)
        self._input_transform: tuple[torch.Tensor, torch.Tensor] | None = None  # None: x_F = x

    def set_frozen_statistics(self, state_vector: np.ndarray) -> None:
        """The normaliser state [mean, var, count] the frozen policy was trained with."""
        n = self.obs_size
        state_vector = np.asarray(state_vector, dtype=np.float64)
        self.frozen_mean.copy_(torch.from_numpy(state_vector[:n]))
        self.frozen_var.copy_(torch.from_numpy(state_vector[n : 2 * n]))
        self._input_transform = None

    def set_input_statistics(self, mean: np.ndarray, var: np.ndarray) -> None:
        """The run normaliser's current statistics: x_F = x * scale + shift, scale and shift in float64.

        Equal statistics give scale 1 and shift 0 exactly, so x_F is x bit for bit.
        """
        frozen_mean, frozen_var = self.frozen_mean.numpy(), self.frozen_var.numpy()
        own_std = np.sqrt(frozen_var + self.epsilon)
        scale = np.sqrt(np.asarray(var, dtype=np.float64) + self.epsilon) / own_std
        shift = (np.asarray(mean, dtype=np.float64) - frozen_mean) / own_std
        # a feature F never saw vary reached F as 0 (RunningNormaliser): it still does, whatever it is now
        unseen = never_varied(frozen_mean, frozen_var)
        scale[unseen], shift[unseen] = 0.0, 0.0
        self._input_transform = (torch.from_numpy(scale.astype(np.float32)), torch.from_numpy(shift.astype(np.float32)))
        # a nested blend's own frozen policy is fed relative to the statistics its run ended with
        self.frozen.set_input_statistics(self.frozen_mean.numpy(), self.frozen_var.numpy())

    def frozen_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """x_F: the observations as the frozen policy's own normaliser would have given them.

        Exact where `obs` is unclipped (the collectors pass unclipped values; every network clips its own inputs).
        """
        if self._input_transform is None:
            return obs
        scale, shift = self._input_transform
        return obs * scale + shift

    def set_coefficient(self, value: float, distill_coef: float | None = None) -> None:
        """Set the blend coefficient c in [0, 1] (and the distillation weight, if given)."""
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"blend coefficient must lie in [0, 1], got {value}")
        self.coefficient.fill_(value)
        if distill_coef is not None:
            self.distill_coef = distill_coef

    def distillation_kl(self, obs: torch.Tensor) -> torch.Tensor:
        """Mean KL(pi_F || pi_S) over these observations; gradients reach S only."""
        with torch.no_grad():
            target = self.frozen.distribution_parameters(self.frozen_inputs(obs))
        teacher = self.student.distribution_from(target)
        return kl_divergence(teacher, self.student.distribution(obs)).mean()

    def auxiliary_loss(self, obs: torch.Tensor) -> torch.Tensor | None:
        """distill_coef * (1 - c) * distillation KL, or None when that weight is 0."""
        weight = self.distill_coef * (1.0 - float(self.coefficient))
        if weight <= 0.0:
            return None
        return weight * self.distillation_kl(obs)

    def distribution_parameters(self, obs: torch.Tensor) -> torch.Tensor:
        """(1 - c) * theta_F(x_F) + c * theta_S(x)."""
        if float(self.coefficient) == 1.0:  # handed over: exactly theta_S(x), without computing theta_F for 0 x
            return self.student.distribution_parameters(obs)
        with torch.no_grad():
            frozen = self.frozen.distribution_parameters(self.frozen_inputs(obs))
        c = self.coefficient
        return (1.0 - c) * frozen + c * self.student.distribution_parameters(obs)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """The student's critic."""
        return self.student.value(obs)

    def spec(self) -> dict:
        """{"kind": "blend", "frozen": ..., "student": ...}."""
        return {"kind": "blend", "frozen": self.frozen.spec(), "student": self.student.spec()}


def build_from_spec(spec: dict[str, Any], init_log_std: float = -0.5) -> Policy:
    """Rebuild a policy's structure from its `spec()` (weights come from a state dict afterwards)."""
    kind = spec.get("kind")
    if kind == "mlp":
        return ActorCritic(
            spec["obs_size"],
            spec["act_size"],
            spec["hidden_sizes"],
            spec["activation"],
            spec["distribution"],
            init_log_std,
        )
    if kind == "blend":
        return BlendedPolicy(build_from_spec(spec["frozen"]), build_from_spec(spec["student"], init_log_std))
    raise ValueError(f"unknown policy kind {kind!r} in spec {spec}")


def blend_coefficient(iteration: int, start: float, end: float, ramp_iterations: int) -> float:
    """c at a 0-based iteration: linear from `start` to `end` over `ramp_iterations`, then `end`."""
    if ramp_iterations <= 0:
        return end
    progress = min(max(iteration, 0) / ramp_iterations, 1.0)
    return start + (end - start) * progress


def new_blend(
    frozen: Policy, frozen_statistics: np.ndarray, student: ActorCritic, copy_log_std: bool = True
) -> BlendedPolicy:
    """A fresh blend at c = 0; the student's Gaussian log std starts at the frozen policy's, so c can rise
    without a jump in exploration noise."""
    blend = BlendedPolicy(frozen, student, frozen_statistics)
    if copy_log_std and student.distribution_name == "gaussian":
        with torch.no_grad():
            params = frozen.distribution_parameters(torch.zeros(1, frozen.obs_size))
            student.log_std.copy_(params[0, frozen.act_size :])
    return blend


def student_of(policy: Policy) -> Policy | None:
    """The student alone, if `policy` is a blend that has fully handed over (c = 1); else None."""
    if isinstance(policy, BlendedPolicy) and float(policy.coefficient) == 1.0:
        return policy.student
    return None
