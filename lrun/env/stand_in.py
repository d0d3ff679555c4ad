"""`lrun/Sleep-v0`: a stand-in for RunEnv with its shapes and its step time, but no physics (numpy only).

Scaling measurements need more ranks than a machine has cores. This env takes RunEnv's observation (41) and
action (18) shapes, so every message the training loop sends has its real size, and spends RunEnv's step time
asleep rather than computing, so a sleeping simulator leaves its core to the others: 16 simulator ranks on 2
cores behave, for the MPI traffic and the learner, like 16 ranks on 16 cores. The default step time is the
fast physics preset's (README, `make bench`); `step_seconds` sets another.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

SLEEP_ENV_ID = "lrun/Sleep-v0"
#: Wall time of one RunEnv step on the fast physics preset (make bench: ~2.4-2.6 ms on this machine's cores).
DEFAULT_STEP_SECONDS = 0.0025
OBS_SIZE, ACT_SIZE = 41, 18


class SleepEnv(gym.Env):
    """RunEnv's spaces, episodes of `episode_steps` steps (truncated, as RunEnv's 1000-step limit), each step
    asleep for `step_seconds`; observations are a slow random walk, the reward is the excitations' mean."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, step_seconds: float = DEFAULT_STEP_SECONDS, episode_steps: int = 1000) -> None:
        if not step_seconds >= 0:
            raise ValueError(f"step_seconds must be >= 0, got {step_seconds!r}")
        if episode_steps < 1:
            raise ValueError(f"episode_steps must be >= 1, got {episode_steps!r}")
        self.step_seconds = float(step_seconds)
        self.episode_steps = int(episode_steps)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_SIZE,), np.float64)
        self.action_space = gym.spaces.Box(0.0, 1.0, (ACT_SIZE,), np.float32)
        self._obs = np.zeros(OBS_SIZE)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode at a random observation (seeded)."""
        super().reset(seed=seed)
        self._obs = self.np_random.normal(size=OBS_SIZE)
        self._t = 0
        return self._obs.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Sleep for the step time; move the observation a little."""
        if self.step_seconds:
            time.sleep(self.step_seconds)
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (ACT_SIZE,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be {ACT_SIZE} finite excitations, got shape {a.shape}")
        self._obs = self._obs + 0.01 * self.np_random.normal(size=OBS_SIZE)
        self._t += 1
        return self._obs.copy(), float(a.mean()) * 0.01, False, self._t >= self.episode_steps, {}
