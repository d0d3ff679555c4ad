"""Re-simulate a stored episode from its seed, physics and stored actions; compare with what was stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lrun.env import ENV_ID
from lrun.env.factory import make_env
from lrun.store.reader import RunStore, StoreError


def replay_episode(run_dir: str | Path, episode_id: int, physics: Any = None) -> dict[str, float]:
    """Replay one episode; returns step count and the maximum deviations from the stored data.

    `physics=None` replays on the episode's own physics (deviation 0 if the store is faithful); a preset name
    or `Physics` replays the same excitations on other physics, to see how far the motion departs.
    """
    with RunStore(run_dir) as store:
        config = store.config
        episode = store.episode(episode_id)
        weakening = store.attrs.get("weakening")
    row, steps = episode["row"], episode["steps"]
    env_config = config.get("env", {})
    env_id = env_config.get("id", ENV_ID)
    kwargs = dict(env_config.get("kwargs", {}))
    if env_id == ENV_ID and "weakening" not in kwargs:
        # the muscles the episode's strengths weakened; files from before lrun recorded it weakened the psoas
        kwargs["weakening"] = weakening or "psoas"
    if physics is None and env_id == ENV_ID:
        physics = {"integrator": row["integrator"].decode(), "accuracy": float(row["accuracy"])}
    env = make_env(
        env_id,
        int(row["difficulty"]) if int(row["difficulty"]) >= 0 else 0,
        int(env_config.get("max_obstacles", 3)),
        physics if physics is not None else "reference",
        int(row["frame_skip"]),
        kwargs,
    )
    obs, info = env.reset(seed=int(row["seed"]))
    layout = info.get("layout")
    if layout is not None:
        stored = row["obstacles"][: int(row["n_obstacles"])]
        if not np.array_equal(layout.obstacles, stored):
            raise StoreError(f"episode {episode_id}: seed {int(row['seed'])} no longer draws the stored obstacles")
    observed = [np.asarray(obs, dtype=np.float32)]
    rewards = []
    for k, action in enumerate(steps["excitations"]):
        obs, reward, terminated, truncated, _ = env.step(action)
        observed.append(np.asarray(obs, dtype=np.float32))
        rewards.append(reward)
        if (terminated or truncated) and k != len(steps["excitations"]) - 1:
            break
    env.close()
    stored_obs = np.concatenate([steps["obs"], row["final_obs"][None]])
    n = min(len(observed), len(stored_obs))
    obs_dev = float(np.max(np.abs(np.array(observed[:n]) - stored_obs[:n])))
    reward_dev = float(np.max(np.abs(np.array(rewards, dtype=np.float32) - steps["reward"][: len(rewards)])))
    return {
        "episode": episode_id,
        "stored_steps": len(steps["excitations"]),
        "replayed_steps": len(rewards),
        "max_obs_deviation": obs_dev,
        "max_reward_deviation": reward_dev,
        "stored_distance": float(row["distance"]),
        "replayed_distance": float(observed[-1][1]) if env_id == ENV_ID else float("nan"),
    }
