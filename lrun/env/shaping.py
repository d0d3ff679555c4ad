"""Reward shaping for Learning to Run: named, composable terms with weights (numpy only, no opensim).

The shaped reward is sum(weight[name] * term[name]). Every term is reported in `info` (and stored per step),
and the task's own reward (pelvis progress minus the ligament penalty) is always reported as
`info["task_reward"]`, so shaped runs stay comparable with each other and with the 2017 results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from lrun.env.physics import STEP_SECONDS

KNEE_ANGLES = (7, 10)  # observation indices of knee_angle_r, knee_angle_l (negative = flexed)
PELVIS_X, PELVIS_Y, HEAD_X = 1, 2, 22  # observation indices
TALUS_L_X, TALUS_R_X = 32, 34  # observation indices of the ankles' x


@dataclass(frozen=True)
class ShapingParams:
    """Parameters of the terms that need one."""

    speed_cap: float = 1.5
    """m/s: `capped_progress` counts pelvis progress only up to this speed (a walk stage)."""
    speed_target: float = 3.0
    """m/s: `speed_target` rewards pelvis speed close to this (a fast stage)."""
    knee_bend_max: float = 0.6
    """rad: `knee_bend` counts knee flexion up to this much (more is not better)."""
    knee_extension_max: float = 0.1
    """rad: `knee_hyperextension` counts knee extension past straight beyond this much (the model's knee
    ligament engages at 10 degrees, 0.17 rad; the 2017 entries penalised from 0.1)."""
    step_margin: float = 0.05
    """m: a foot leads once its ankle is this far ahead of the other (hysteresis: jitter is not a step)."""
    step_advance: float = 0.1
    """m: the pelvis must advance this far between two counted steps (stepping in place is not a step)."""


class StepCounter:
    """Counts footsteps: the leading foot changes (ankle x order, with a margin) after the pelvis advanced.

    Stateful over an episode: `reset` with the first observation, then `update` with each next one.
    """

    def __init__(self, params: ShapingParams) -> None:
        self.params = params
        self.lead = 0  # +1 left ankle ahead, -1 right ahead, 0 not yet decided
        self.x_at_step = 0.0

    def reset(self, obs: np.ndarray) -> None:
        """Start an episode."""
        self.lead = self._lead_of(obs)
        self.x_at_step = float(obs[PELVIS_X])

    def _lead_of(self, obs: np.ndarray) -> int:
        gap = float(obs[TALUS_L_X] - obs[TALUS_R_X])
        if abs(gap) > self.params.step_margin:
            return 1 if gap > 0 else -1
        return 0

    def update(self, obs: np.ndarray) -> float:
        """1.0 if this observation completes a step, else 0.0."""
        lead = self._lead_of(obs)
        if lead == 0 or lead == self.lead:
            return 0.0
        first, self.lead = self.lead == 0, lead
        x = float(obs[PELVIS_X])
        if first or x - self.x_at_step < self.params.step_advance:
            if first:
                self.x_at_step = x
            return 0.0
        self.x_at_step = x
        return 1.0


def term_values(
    prev_obs: np.ndarray,
    obs: np.ndarray,
    info: dict[str, Any],
    p: ShapingParams,
    footstep: float = 0.0,
    fell: bool = False,
) -> dict[str, float]:
    """Every available term for one step (RunEnv observations before and after it; `footstep` from a
    `StepCounter`, the one stateful term; `fell`: this step ended the episode with the pelvis too low)."""
    delta_x = float(info["delta_x"])
    speed = delta_x / STEP_SECONDS
    knees = obs[list(KNEE_ANGLES)]
    flexion = np.clip(-knees, 0.0, p.knee_bend_max)
    hyperextension = np.maximum(knees - p.knee_extension_max, 0.0)
    return {
        # the task's own terms
        "progress": delta_x,
        "ligament": -float(info["ligament_penalty"]),
        # shaping
        "capped_progress": min(delta_x, p.speed_cap * STEP_SECONDS),
        "knee_bend": float(flexion.mean()) * STEP_SECONDS,
        "knee_hyperextension": -float(hyperextension.sum()) * STEP_SECONDS,
        "speed_target": -abs(speed - p.speed_target) * STEP_SECONDS,
        "alive": STEP_SECONDS,
        "upright": -abs(float(obs[0])) * STEP_SECONDS,
        "head_ahead": min(0.0, float(obs[HEAD_X] - obs[PELVIS_X])) * STEP_SECONDS,
        "footstep": footstep,
        "fall": -1.0 if fell else 0.0,
    }


TERMS = (
    "progress",
    "ligament",
    "capped_progress",
    "knee_bend",
    "knee_hyperextension",
    "speed_target",
    "alive",
    "upright",
    "head_ahead",
    "footstep",
    "fall",
)
#: What each term rewards, for `lrun config-keys` and the README.
TERM_HELP = {
    "progress": "pelvis x advance this step (m): the task's reward",
    "ligament": "minus the task's ligament penalty (1e-7 * sqrt(sum of squared ligament forces))",
    "capped_progress": "pelvis advance, counted only up to speed_cap (a steady walk)",
    "knee_bend": "mean knee flexion up to knee_bend_max (rad), per second: the deepsense.ai knee-bend bonus",
    "knee_hyperextension": "minus knee extension past straight beyond knee_extension_max (rad, both knees summed), "
    "per second: the 2017 entries' straight-knee penalty; a policy can walk on knees locked backwards against "
    "their ligaments, which knee_bend (flexion only) does not see",
    "speed_target": "minus |pelvis speed - speed_target| (m/s), per second",
    "alive": "1 per second of not having fallen",
    "upright": "minus |pelvis tilt| (rad), per second",
    "head_ahead": "minus how far the head is behind the pelvis (m, 0 when ahead), per second: lean into the walk",
    "footstep": "1 per step: the leading ankle changes (by step_margin) after the pelvis advanced step_advance",
    "fall": "-1 once, on the step the pelvis drops below 0.65 m (the fall that ends the episode; not an integrator "
    "failure): makes a forward dive cost more than it gains",
}
TASK_WEIGHTS = {"progress": 1.0, "ligament": 1.0}


def check_weights(weights: dict[str, float]) -> None:
    """Raise ValueError naming any unknown term or non-numeric weight."""
    for name, weight in weights.items():
        if name not in TERMS:
            raise ValueError(f"unknown reward term {name!r}; terms: {', '.join(TERMS)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"reward term {name!r}: weight must be a number, got {weight!r}")


class ShapedReward(gym.Wrapper):
    """Replace RunEnv's reward by a weighted sum of named terms; report every term and the task reward."""

    task_terms: ClassVar[tuple[str, ...]] = ("delta_x", "ligament_penalty")

    def __init__(self, env: gym.Env, weights: dict[str, float], params: ShapingParams | None = None) -> None:
        super().__init__(env)
        check_weights(weights)
        self.weights = dict(weights)
        self.params = params or ShapingParams()
        self._obs: np.ndarray | None = None
        self.steps = StepCounter(self.params)
        # what the trajectory store records per step: the env's own terms, the task reward, each shaping term
        self.reward_terms = (*self.task_terms, "task_reward", *(f"shaping_{n}" for n in self.weights))

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        """Reset the wrapped env."""
        obs, info = self.env.reset(**kwargs)
        self._obs = np.asarray(obs)
        self.steps.reset(self._obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """Step and reshape the reward."""
        obs, task_reward, terminated, truncated, info = self.env.step(action)
        footstep = self.steps.update(np.asarray(obs)) if "footstep" in self.weights else 0.0
        fell = bool(terminated) and not info.get("integrator_failure")
        terms = term_values(self._obs, np.asarray(obs), info, self.params, footstep, fell)
        shaped = 0.0
        for name, weight in self.weights.items():
            value = terms[name] if not info.get("integrator_failure") else 0.0
            info[f"shaping_{name}"] = value
            shaped += weight * value
        info["task_reward"] = float(task_reward)
        self._obs = np.asarray(obs)
        return obs, shaped, terminated, truncated, info
