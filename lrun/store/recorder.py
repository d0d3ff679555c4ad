"""Per-step and per-episode records a simulator collects for the trajectory store (numpy only, no h5py)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lrun.env import ENV_ID
from lrun.env.factory import reward_terms_of
from lrun.store.schema import EPISODE_FIELDS, empty_rows


def env_facts(env: Any) -> dict[str, Any]:
    """What the episode table needs to know about an env: difficulty, physics, obstacle slots, frame skip, and
    the names of its observations and actions where it has them (the store's axis labels)."""
    inner = env.unwrapped
    physics = getattr(inner, "physics", None)
    labels = {}
    for axis, attribute in (("observation", "observation_names"), ("action", "muscle_names")):
        names = getattr(inner, attribute, None)
        if names is not None:
            labels[axis] = tuple(names)
    return {
        "difficulty": int(getattr(inner, "difficulty", -1)),
        "max_obstacles": int(getattr(inner, "max_obstacles", 0)),
        "integrator": physics.integrator if physics is not None else "",
        "accuracy": float(physics.accuracy) if physics is not None else float("nan"),
        "frame_skip": int(getattr(env, "skip", 1)),
        "weakening": str(getattr(inner, "weakening", "")),
        "reward_terms": reward_terms_of(env),
        "labels": labels,
    }


class EpisodeBook:
    """Tracks the episode each env is in (id, step counter, start row and time) and builds episode rows."""

    def __init__(
        self,
        n_envs: int,
        simulator_index: int,
        obs_size: int,
        facts: dict[str, Any],
        first_row: int = 0,
        first_counter: int = 0,
    ) -> None:
        self.n_envs = n_envs
        self.obs_size = obs_size
        self.facts = facts
        self.id_base = simulator_index * 2**32
        self.counter = first_counter
        self.row = first_row  # file row of the next step
        self.ids = np.zeros(n_envs, np.int64)
        self.steps = np.zeros(n_envs, np.int32)
        self.start_rows = np.zeros(n_envs, np.int64)
        self.start_times = np.zeros(n_envs)
        self.seeds = np.zeros(n_envs, np.int64)
        self.layouts: list[Any] = [None] * n_envs
        self.finished: list[dict[str, Any]] = []

    def start(self, env_index: int, reset_info: dict) -> None:
        """A new episode begins in env `env_index` at the next row."""
        self.ids[env_index] = self.id_base + self.counter
        self.counter += 1
        self.steps[env_index] = 0
        self.start_rows[env_index] = -1  # set by the first step
        self.start_times[env_index] = time.time()
        self.seeds[env_index] = int(reset_info.get("episode_seed", -1))
        self.layouts[env_index] = reset_info.get("layout")

    def step_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Episode ids, steps within the episode and file rows for one step of every env (t-major rows)."""
        rows = self.row + np.arange(self.n_envs)
        self.start_rows = np.where(self.start_rows < 0, rows, self.start_rows)
        ids, steps = self.ids.copy(), self.steps.copy()
        self.steps += 1
        self.row += self.n_envs
        return ids, steps, rows

    def finish(
        self, env_index: int, info: dict, terminated: bool, final_obs: np.ndarray, row: int, policy_version: int
    ) -> None:
        """The episode in env `env_index` ended at file row `row`; queue its table row."""
        episode = info["episode"]
        layout = self.layouts[env_index]
        width = max(self.facts["max_obstacles"], 1)
        obstacles = np.full((width, 3), np.nan)
        psoas = np.array([1.0, 1.0])
        n_obstacles = 0
        if layout is not None:
            n_obstacles = len(layout.obstacles)
            obstacles[:n_obstacles] = layout.obstacles
            psoas = np.array(layout.psoas)
        failure = bool(info.get("integrator_failure", False))
        final = np.asarray(final_obs, dtype=np.float32).reshape(-1)
        distance = float(final[1]) if self.facts["difficulty"] >= 0 else float("nan")
        self.finished.append(
            {
                "id": self.ids[env_index],
                "env_index": env_index,
                "seed": self.seeds[env_index],
                "difficulty": self.facts["difficulty"],
                "n_obstacles": n_obstacles,
                "obstacles": obstacles,
                "psoas": psoas,
                "integrator": self.facts["integrator"].encode(),
                "accuracy": self.facts["accuracy"],
                "frame_skip": self.facts["frame_skip"],
                "return": episode["return"],
                "task_return": episode.get("task_return", episode["return"]),
                "length": episode["length"],
                "sim_steps": episode.get("sim_steps", episode["length"] * self.facts["frame_skip"]),
                "distance": distance,
                "fell": bool(terminated and not failure and self.facts["difficulty"] >= 0),
                "integrator_failure": failure,
                "start_step": self.start_rows[env_index],
                "end_step": row,
                "policy_version": policy_version,
                "wall_time_s": time.time() - self.start_times[env_index],
                "end_time": time.time(),
                "final_obs": final,
            }
        )

    def take_finished(self) -> dict[str, np.ndarray]:
        """Episode rows queued since the last call, as column arrays."""
        rows = empty_rows(EPISODE_FIELDS, len(self.finished), self.obs_size, 0, self.facts["max_obstacles"])
        for i, record in enumerate(self.finished):
            for name, value in record.items():
                rows[name][i] = value
        self.finished = []
        return rows


def trajectory_attributes(config_json: str, env_id: str, world_rank: int, simulator_index: int, **extra: Any) -> dict:
    """The attributes every rank file carries: lrun's version, the resolved config, the model file's checksum
    (lrun/Run-v0; empty for other envs), which rank wrote it, and anything a command adds (`lrun eval`'s
    checkpoint)."""
    checksum = ""
    if env_id == ENV_ID:
        from lrun.env.model import model_checksum  # opensim: only where the env is RunEnv

        checksum = model_checksum()
    from lrun import __version__

    return {
        "lrun_version": __version__,
        "config": config_json,
        "model_checksum": checksum,
        "world_rank": world_rank,
        "simulator_index": simulator_index,
        **extra,
    }
