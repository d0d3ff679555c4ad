"""Environment wrappers used by training."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class FrameSkip(gym.Wrapper):
    """Repeat each action `skip` times; rewards (and reward terms in info) are summed; stops at an episode end.

    `info["frames"]` says how many env steps the action was applied for (less than `skip` where the episode
    ended), so simulated time is counted exactly. A recorder sees one frame per `skip` env steps, so
    `metadata["render_fps"]` is the wrapped env's divided by `skip`: videos play in real time.
    """

    def __init__(self, env: gym.Env, skip: int) -> None:
        super().__init__(env)
        if skip < 1:
            raise ValueError(f"frame skip must be >= 1, got {skip}")
        self.skip = skip
        fps = env.metadata.get("render_fps")
        if fps:
            self.metadata = {**env.metadata, "render_fps": fps / skip}
        try:
            self.summed_terms = tuple(env.get_wrapper_attr("reward_terms"))
        except AttributeError:
            self.summed_terms = ()

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        """Step the wrapped env up to `skip` times with the same action."""
        total = 0.0
        summed: dict[str, float] = {}
        frames = 0
        for _ in range(self.skip):
            frames += 1
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            for key in self.summed_terms:
                if key in info:
                    summed[key] = summed.get(key, 0.0) + info[key]
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, {**info, **summed, "frames": frames}
