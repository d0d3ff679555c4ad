"""Actor-critic networks over a box action space (Gaussian or Beta policy)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.distributions import Beta, Distribution, Independent, Normal

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
DISTRIBUTIONS = ("gaussian", "beta")


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


class ActorCritic(nn.Module):
    """Separate policy and value MLPs.

    Gaussian: the network's mean lives in [-1, 1]-scaled action units, with a state-independent log std.
    Beta: the network gives (alpha, beta) > 1, so samples lie in (0, 1). Either way `env_action` maps the raw
    sample onto the env's [low, high] box and clips; PPO works on the raw sample.
    """

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
        hidden = list(hidden_sizes)
        n_out = act_size if distribution == "gaussian" else 2 * act_size
        self.actor = mlp([obs_size, *hidden, n_out], activation, out_gain=0.01)
        self.critic = mlp([obs_size, *hidden, 1], activation, out_gain=1.0)
        self.log_std = (
            nn.Parameter(torch.full((act_size,), float(init_log_std))) if distribution == "gaussian" else None
        )

    def distribution(self, obs: torch.Tensor) -> Distribution:
        """The action distribution at these (normalised) observations."""
        out = self.actor(obs)
        if self.distribution_name == "gaussian":
            return Independent(Normal(out, self.log_std.exp().expand_as(out)), 1)
        alpha, beta = torch.chunk(nn.functional.softplus(out) + 1.0, 2, dim=-1)
        return Independent(Beta(alpha, beta), 1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(obs), shape (batch,)."""
        return self.critic(obs).squeeze(-1)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action (Gaussian mean, Beta mean) in raw units."""
        dist = self.distribution(obs)
        return dist.mean

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample raw actions for a batch of normalised observations: (actions, log-probs, values)."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        dist = self.distribution(obs_t)
        raw = dist.mean if deterministic else dist.sample()
        if self.distribution_name == "beta":
            raw = raw.clamp(1e-6, 1.0 - 1e-6)  # keep log-probs finite at the edges
        return raw.numpy(), dist.log_prob(raw).numpy(), self.value(obs_t).numpy()

    @torch.no_grad()
    def values(self, obs: np.ndarray) -> np.ndarray:
        """V for a batch of normalised observations, as numpy."""
        return self.value(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    def env_action(self, raw: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Map raw policy outputs onto the env's action box and clip."""
        unit = (raw + 1.0) / 2.0 if self.distribution_name == "gaussian" else raw
        return np.clip(low + unit * (high - low), low, high)


def flat_parameters(module: nn.Module) -> np.ndarray:
    """All parameters in one float32 vector (registration order)."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).numpy().astype(np.float32)


def load_flat_parameters(module: nn.Module, flat: np.ndarray) -> None:
    """Inverse of `flat_parameters`."""
    expected = sum(p.numel() for p in module.parameters())
    if len(flat) != expected:
        raise ValueError(f"parameter vector has {len(flat)} values, the network {expected}")
    offset = 0
    with torch.no_grad():
        for p in module.parameters():
            n = p.numel()
            p.copy_(torch.as_tensor(flat[offset : offset + n]).reshape(p.shape))
            offset += n
