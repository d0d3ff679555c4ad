"""Actor-critic networks over a box action space (Gaussian, Beta, or a tanh-squashed Gaussian for SAC)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.distributions import Beta, Distribution, Independent, Normal, TanhTransform, TransformedDistribution

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
#: Networks clip their (normalised) inputs to +-INPUT_CLIP themselves, as the normaliser would.
INPUT_CLIP = 10.0
DISTRIBUTIONS = ("gaussian", "beta", "squashed")
#: Log std range of the squashed Gaussian (SAC's actor): wide enough to explore, narrow enough to stay finite.
SQUASHED_LOG_STD = (-5.0, 2.0)
#: Raw actions are kept this far inside the open interval of a Beta's (0, 1) or a squashed Gaussian's (-1, 1).
EDGE = 1e-6


def mlp(sizes: Sequence[int], activation: str, out_gain: float) -> nn.Sequential:
    """Orthogonally initialised MLP; no activation after the last layer."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(n_in, n_out)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, gain=out_gain if last else np.sqrt(2.0))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Policy(nn.Module):
    """What every policy offers the collectors and PPO: a distribution over raw actions and a value.

    Subclasses give `distribution_parameters` (batch, 2 * act_size): Gaussian [mean, log std] in [-1, 1]-scaled
    action units, Beta [alpha, beta] > 1 so samples lie in (0, 1), squashed Gaussian [mean, log std] of the
    Gaussian whose tanh is the action in (-1, 1); `env_action` maps raw samples onto the env's [low, high] box and
    clips. PPO and SAC work on the raw samples.
    """

    obs_size: int
    act_size: int
    distribution_name: str

    def distribution_parameters(self, obs: torch.Tensor) -> torch.Tensor:
        """The distribution's parameters at these (normalised) observations."""
        raise NotImplementedError

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(obs), shape (batch,)."""
        raise NotImplementedError

    def spec(self) -> dict:
        """The architecture, enough to rebuild the policy (`lrun.learn.blend.build_from_spec`)."""
        raise NotImplementedError

    def set_input_statistics(self, mean: np.ndarray, var: np.ndarray) -> None:
        """The observation normaliser's current statistics; a plain network ignores them (blends use them)."""

    def auxiliary_loss(self, obs: torch.Tensor) -> torch.Tensor | None:
        """A loss PPO adds to its own on these observations (a blend's distillation); None for a plain network."""
        return None

    def distribution_from(self, parameters: torch.Tensor) -> Distribution:
        """The distribution these parameters describe."""
        first, second = torch.chunk(parameters, 2, dim=-1)
        if self.distribution_name == "gaussian":
            return Independent(Normal(first, second.exp()), 1)
        if self.distribution_name == "squashed":
            return Independent(TransformedDistribution(Normal(first, second.exp()), [TanhTransform(cache_size=1)]), 1)
        return Independent(Beta(first, second), 1)

    def distribution(self, obs: torch.Tensor) -> Distribution:
        """The action distribution at these (normalised) observations."""
        return self.distribution_from(self.distribution_parameters(obs))

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action (Gaussian mean, Beta mean, tanh of the squashed Gaussian's mean) in raw units."""
        return self.mode_of(self.distribution_parameters(obs))

    def mode_of(self, parameters: torch.Tensor) -> torch.Tensor:
        """The deterministic action these distribution parameters give."""
        if self.distribution_name == "squashed":
            return torch.tanh(torch.chunk(parameters, 2, dim=-1)[0])
        return self.distribution_from(parameters).mean

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample raw actions for a batch of normalised observations: (actions, log-probs, values)."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        parameters = self.distribution_parameters(obs_t)
        dist = self.distribution_from(parameters)
        raw = self.mode_of(parameters) if deterministic else dist.sample()
        if self.distribution_name == "beta":
            raw = raw.clamp(EDGE, 1.0 - EDGE)  # keep log-probs finite at the edges
        elif self.distribution_name == "squashed":
            raw = raw.clamp(-1.0 + EDGE, 1.0 - EDGE)
        return raw.numpy(), dist.log_prob(raw).numpy(), self.value(obs_t).numpy()

    @torch.no_grad()
    def values(self, obs: np.ndarray) -> np.ndarray:
        """V for a batch of normalised observations, as numpy."""
        return self.value(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    def env_action(self, raw: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Map raw policy outputs onto the env's action box and clip."""
        unit = raw if self.distribution_name == "beta" else (raw + 1.0) / 2.0
        return np.clip(low + unit * (high - low), low, high)


class ActorCritic(Policy):
    """Separate policy and value MLPs; the Gaussian has a state-independent log std, the squashed Gaussian (SAC's
    actor, whose critics live in its learner) a state-dependent one."""

    def __init__(
        self,
        obs_size: int,
        act_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        distribution: str = "gaussian",
        init_log_std: float = -0.5,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {distribution!r}; choose one of {list(DISTRIBUTIONS)}")
        self.obs_size, self.act_size, self.distribution_name = obs_size, act_size, distribution
        self.activation_name = activation
        self.hidden_sizes = hidden = list(hidden_sizes)
        n_out = act_size if distribution == "gaussian" else 2 * act_size
        self.actor = mlp([obs_size, *hidden, n_out], activation, out_gain=0.01)
        self.critic = mlp([obs_size, *hidden, 1], activation, out_gain=1.0)
        self.log_std = (
            nn.Parameter(torch.full((act_size,), float(init_log_std))) if distribution == "gaussian" else None
        )

    def distribution_parameters(self, obs: torch.Tensor) -> torch.Tensor:
        """Gaussian [mean, log std] or Beta [alpha, beta], shape (batch, 2 * act_size)."""
        out = self.actor(obs.clamp(-INPUT_CLIP, INPUT_CLIP))
        if self.distribution_name == "gaussian":
            return torch.cat([out, self.log_std.expand_as(out)], dim=-1)
        if self.distribution_name == "squashed":
            mean, log_std = torch.chunk(out, 2, dim=-1)
            low, high = SQUASHED_LOG_STD
            return torch.cat([mean, low + (high - low) * (torch.tanh(log_std) + 1.0) / 2.0], dim=-1)
        return nn.functional.softplus(out) + 1.0

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(obs), shape (batch,)."""
        return self.critic(obs.clamp(-INPUT_CLIP, INPUT_CLIP)).squeeze(-1)

    def spec(self) -> dict:
        """The architecture, enough to rebuild the network and to check checkpoints against a config."""
        return {
            "kind": "mlp",
            "obs_size": self.obs_size,
            "act_size": self.act_size,
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation_name,
            "distribution": self.distribution_name,
        }


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters training changes (a blend's frozen network excluded), in registration order."""
    return [p for p in module.parameters() if p.requires_grad]


def count_trainable(module: nn.Module) -> int:
    """Number of trainable values."""
    return sum(p.numel() for p in trainable_parameters(module))


def flat_parameters(module: nn.Module) -> np.ndarray:
    """The trainable parameters in one float32 vector (registration order)."""
    return torch.cat([p.detach().reshape(-1) for p in trainable_parameters(module)]).numpy().astype(np.float32)


def load_flat_parameters(module: nn.Module, flat: np.ndarray) -> None:
    """Inverse of `flat_parameters`."""
    expected = count_trainable(module)
    if len(flat) != expected:
        raise ValueError(f"parameter vector has {len(flat)} values, the network {expected}")
    offset = 0
    with torch.no_grad():
        for p in trainable_parameters(module):
            n = p.numel()
            p.copy_(torch.as_tensor(flat[offset : offset + n]).reshape(p.shape))
            offset += n
