"""Several independent environments in one process, stepped in turn with auto-reset (no opensim import).

This is what a simulator rank holds. Each env gets its own stream of episode seeds derived from one base seed,
so a run is reproducible and every episode can be re-created from the seed stored with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np


class SerialVectorEnv:
    """E envs stepped one after another; a finished episode is reset at once with the env's next seed.

    `step` returns the observations to act on next: where an episode ended, that is the new episode's first
    observation, and the last observation of the finished one is in `infos[i]["final_observation"]`
    (needed to bootstrap the value at a time limit).
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], seed: int = 0) -> None:
        if len(env_fns) == 0:
            raise ValueError("SerialVectorEnv needs at least one env")
        self.envs = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        children = np.random.SeedSequence(seed).spawn(self.num_envs)
        self._seed_streams = [np.random.default_rng(child) for child in children]
        self.episode_seeds = np.zeros(self.num_envs, dtype=np.int64)
        self.episode_returns = np.zeros(self.num_envs)
        self.episode_task_returns = np.zeros(self.num_envs)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.episode_sim_steps = np.zeros(self.num_envs, dtype=np.int64)  # env steps simulated (frame skip)
        self._obs: np.ndarray | None = None

    def _next_seed(self, i: int) -> int:
        return int(self._seed_streams[i].integers(0, 2**63 - 1))

    def _reset_one(self, i: int) -> tuple[np.ndarray, dict]:
        seed = self._next_seed(i)
        self.episode_seeds[i] = seed
        self.episode_returns[i] = 0.0
        self.episode_task_returns[i] = 0.0
        self.episode_lengths[i] = 0
        self.episode_sim_steps[i] = 0
        obs, info = self.envs[i].reset(seed=seed)
        info = dict(info, episode_seed=seed)
        return obs, info

    def reset(self) -> tuple[np.ndarray, list[dict]]:
        """Reset every env with its next seed; returns stacked observations and per-env infos."""
        results = [self._reset_one(i) for i in range(self.num_envs)]
        self._obs = np.stack([obs for obs, _ in results])
        return self._obs.copy(), [info for _, info in results]

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Step env i with actions[i]; auto-reset finished envs. Returns obs, rewards, terminated, truncated, infos."""
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        if len(actions) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions, got {len(actions)}")
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: list[dict[str, Any]] = []
        for i, env in enumerate(self.envs):
            obs, reward, term, trunc, info = env.step(actions[i])
            rewards[i], terminated[i], truncated[i] = reward, term, trunc
            self.episode_returns[i] += reward
            self.episode_task_returns[i] += info.get("task_reward", reward)  # unshaped, where a wrapper shapes
            self.episode_lengths[i] += 1
            self.episode_sim_steps[i] += int(info.get("frames", 1))
            if term or trunc:
                info = dict(
                    info,
                    final_observation=obs,
                    episode={
                        "return": float(self.episode_returns[i]),
                        "task_return": float(self.episode_task_returns[i]),
                        "length": int(self.episode_lengths[i]),
                        "sim_steps": int(self.episode_sim_steps[i]),
                        "seed": int(self.episode_seeds[i]),
                    },
                )
                obs, reset_info = self._reset_one(i)
                info["reset_info"] = reset_info
            self._obs[i] = obs
            infos.append(info)
        return self._obs.copy(), rewards, terminated, truncated, infos

    def close(self) -> None:
        """Close every env."""
        for env in self.envs:
            env.close()
