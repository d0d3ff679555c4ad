"""How the knees are used over an evaluation's steps (numpy only): bent the human way, or locked backwards.

In `gait9dof18musc` a knee's angle is negative when flexed (range -120 to +10 degrees). Its ligament
(`KneeLimit_r/l`, a CoordinateLimitForce) engages past +10 degrees; the task charges next to nothing for leaning
on it (1e-7 x the ligament forces' norm), so a policy can walk on knees held backwards against the ligament, a
gait no person walks with and that a flexion bonus alone does not see (README, "The walkers' knees").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lrun.env.shaping import KNEE_ANGLES

#: rad: where the model's knee ligament starts to hold the knee (+10 degrees, hyperextension).
KNEE_LIGAMENT_RAD = float(np.deg2rad(10.0))
#: rad: flexion counted as a bent knee (10 degrees the human way).
KNEE_FLEXED_RAD = -KNEE_LIGAMENT_RAD
SIDES = (("right", KNEE_ANGLES[0]), ("left", KNEE_ANGLES[1]))


def knee_gait(obs: np.ndarray) -> dict[str, Any]:
    """Per knee, over the observations (rows of RunEnv's 41 values): the angle's 5th, 50th and 95th percentiles
    (rad), the fraction of steps past the ligament (> +10 degrees) and the fraction flexed (< -10 degrees)."""
    obs = np.asarray(obs, dtype=np.float64)
    result: dict[str, Any] = {"steps": len(obs)}
    for side, index in SIDES:
        angle = obs[:, index]
        if len(angle) == 0:
            result[side] = {"p5": np.nan, "median": np.nan, "p95": np.nan, "past_ligament": np.nan, "flexed": np.nan}
            continue
        p5, median, p95 = np.percentile(angle, [5, 50, 95])
        result[side] = {
            "p5": float(p5),
            "median": float(median),
            "p95": float(p95),
            "past_ligament": float(np.mean(angle > KNEE_LIGAMENT_RAD)),
            "flexed": float(np.mean(angle < KNEE_FLEXED_RAD)),
        }
    return result


def format_knee_gait(gait: dict[str, Any]) -> str:
    """One summary line: how often each knee is locked backwards or flexed, and its median angle."""
    r, left = gait["right"], gait["left"]
    return (
        f"  knees      locked backwards (> +10 deg) {100 * r['past_ligament']:.0f} % / "
        f"{100 * left['past_ligament']:.0f} % of decisions (right / left), flexed (< -10 deg) "
        f"{100 * r['flexed']:.0f} % / {100 * left['flexed']:.0f} %; "
        f"median {r['median']:+.2f} / {left['median']:+.2f} rad"
    )
