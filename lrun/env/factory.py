"""Build the training env named by an `EnvConfig`: `lrun/Run-v0` or any `gymnasium:<id>`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym

from lrun.env import ENV_ID
from lrun.env.stand_in import SLEEP_ENV_ID, SleepEnv
from lrun.env.wrappers import FrameSkip

GYMNASIUM_PREFIX = "gymnasium:"


def make_env(
    env_id: str,
    difficulty: int = 0,
    max_obstacles: int = 3,
    physics: Any = "graders-2017",
    frame_skip: int = 1,
    kwargs: dict | None = None,
    reward_weights: dict[str, float] | None = None,
    shaping: Any = None,
) -> gym.Env:
    """One env. Raises ValueError naming the id if it is unknown."""
    kwargs = dict(kwargs or {})
    if env_id == ENV_ID:
        from lrun.env.run_env import RunEnv

        env: gym.Env = RunEnv(difficulty=difficulty, max_obstacles=max_obstacles, physics=physics, **kwargs)
    elif env_id == SLEEP_ENV_ID:
        env = SleepEnv(**kwargs)
    elif env_id.startswith(GYMNASIUM_PREFIX):
        name = env_id[len(GYMNASIUM_PREFIX) :]
        try:
            env = gym.make(name, **kwargs)
        except gym.error.Error as exc:
            raise ValueError(f"env.id {env_id!r}: gymnasium cannot make {name!r}: {exc}") from exc
    else:
        raise ValueError(
            f"env.id {env_id!r}: use {ENV_ID}, {SLEEP_ENV_ID} (a stand-in for scaling measurements) or "
            "gymnasium:<id> (e.g. gymnasium:Pendulum-v1)"
        )
    if reward_weights:
        if env_id != ENV_ID:
            raise ValueError(f"reward.weights: reward shaping needs {ENV_ID}, not {env_id!r}")
        from lrun.env.shaping import ShapedReward

        env = ShapedReward(env, reward_weights, shaping)
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(f"env.id {env_id!r}: lrun trains box (continuous) action spaces only")
    return FrameSkip(env, frame_skip) if frame_skip > 1 else env


def reward_terms_of(env: gym.Env) -> tuple[str, ...]:
    """The named reward components an env (or its outermost wrapper that knows them) reports in `info`."""
    try:
        return tuple(env.get_wrapper_attr("reward_terms"))
    except AttributeError:
        return ()


def env_factory(env_config, reward_config=None) -> Callable[[], gym.Env]:
    """A zero-argument constructor for the env an `EnvConfig` (and optional `RewardConfig`) describes."""
    c = env_config
    weights = dict(reward_config.weights) if reward_config is not None else {}
    shaping = None
    if weights:
        from lrun.env.shaping import ShapingParams

        r = reward_config
        shaping = ShapingParams(
            speed_cap=r.speed_cap,
            speed_target=r.speed_target,
            knee_bend_max=r.knee_bend_max,
            knee_extension_max=r.knee_extension_max,
            step_margin=r.step_margin,
            step_advance=r.step_advance,
        )
    return lambda: make_env(c.id, c.difficulty, c.max_obstacles, c.physics, c.frame_skip, c.kwargs, weights, shaping)
