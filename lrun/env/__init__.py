"""The Learning to Run environment (`RunEnv`, gymnasium id `lrun/Run-v0`) and a serial vector of envs.

`RunEnv` imports opensim; it is loaded on first use so that maths-only code can import `lrun.env.layout`,
`lrun.env.physics` and `lrun.env.vector` without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gymnasium as gym

from lrun.env.physics import PRESETS, Physics, resolve_physics
from lrun.env.vector import SerialVectorEnv

if TYPE_CHECKING:
    from lrun.env.run_env import RunEnv

ENV_ID = "lrun/Run-v0"

if ENV_ID not in gym.registry:
    # No TimeLimit wrapper: RunEnv truncates at 1000 steps itself.
    gym.register(id=ENV_ID, entry_point="lrun.env.run_env:RunEnv")


def __getattr__(name: str):
    if name == "RunEnv":
        from lrun.env.run_env import RunEnv

        return RunEnv
    raise AttributeError(name)


__all__ = ["ENV_ID", "PRESETS", "Physics", "RunEnv", "SerialVectorEnv", "resolve_physics"]
