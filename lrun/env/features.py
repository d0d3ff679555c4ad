"""What the policy sees: versioned maps from RunEnv's 41 task observations to network inputs, and the
left/right mirror of observations and excitations (numpy only, no opensim).

The env, the trajectory store, `lrun replay` and the graders' metrics keep the task's own 41 values; a feature
map is applied where observations enter the policy (collectors, `lrun eval`, cloning), and its name is part of
the config a checkpoint carries, so every command feeds a policy what it was trained on.

Feature maps:

- ``task``: the 41 values as they are.
- ``relative-v1``: the same information with every absolute x replaced by its offset from the pelvis, so that
  nothing the policy sees grows with the distance walked (the 2017 entries' "positions relative to the pelvis";
  a 34-value pelvis-relative observation beat the full one in the only published ablation). 38 values.

Mirror: the model is planar, so swapping the legs is an exact symmetry of the dynamics: joint angles and speeds,
toe and talus points, psoas strengths and the 9 + 9 muscle excitations trade places; the pelvis, torso, head,
centre of mass and the obstacle stay where they are.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lrun.env import ENV_ID

TASK_SIZE = 41
ACT_SIZE = 18
MUSCLES_PER_LEG = 9

# RunEnv observation indices (l2r-2017.md)
PELVIS_TILT, PELVIS_X, PELVIS_Y = 0, 1, 2
PELVIS_SPEEDS = (3, 4, 5)
JOINTS_R, JOINTS_L = (6, 7, 8), (9, 10, 11)
JOINT_SPEEDS_R, JOINT_SPEEDS_L = (12, 13, 14), (15, 16, 17)
COM_X, COM_Y, COM_VX, COM_VY = 18, 19, 20, 21
POINTS = ("head", "pelvis", "torso", "toes_l", "toes_r", "talus_l", "talus_r")  # (x, y) pairs from index 22
PSOAS_L, PSOAS_R = 36, 37
OBSTACLE = (38, 39, 40)


#: A name for each of the 41 task observations, in order (the trajectory store's `observation` labels).
TASK_NAMES: tuple[str, ...] = (
    # the pelvis's coordinates carry OpenSim's names (pelvis_tx); pelvis_x further on is the body's point
    *("pelvis_tilt", "pelvis_tx", "pelvis_ty", "pelvis_tilt_speed", "pelvis_tx_speed", "pelvis_ty_speed"),
    *(f"{joint}_{side}" for side in "rl" for joint in ("hip", "knee", "ankle")),
    *(f"{joint}_{side}_speed" for side in "rl" for joint in ("hip", "knee", "ankle")),
    *("com_x", "com_y", "com_vx", "com_vy"),
    *(f"{name}_{axis}" for name in POINTS for axis in "xy"),
    *("psoas_l", "psoas_r", "obstacle_dx", "obstacle_y", "obstacle_radius"),
)


def point(name: str) -> tuple[int, int]:
    """Indices of a body point's (x, y) in the task observation."""
    i = 22 + 2 * POINTS.index(name)
    return i, i + 1


def _task_mirror() -> np.ndarray:
    m = np.arange(TASK_SIZE)
    for a, b in [(JOINTS_R, JOINTS_L), (JOINT_SPEEDS_R, JOINT_SPEEDS_L)]:
        m[list(a)], m[list(b)] = list(b), list(a)
    for left, right in [("toes_l", "toes_r"), ("talus_l", "talus_r")]:
        m[list(point(left))], m[list(point(right))] = list(point(right)), list(point(left))
    m[PSOAS_L], m[PSOAS_R] = PSOAS_R, PSOAS_L
    return m


#: relative-v1: (source index, index subtracted or -1) for each feature, in order.
_RELATIVE_V1: tuple[tuple[int, int], ...] = (
    (PELVIS_TILT, -1),
    (PELVIS_Y, -1),
    *((i, -1) for i in PELVIS_SPEEDS),
    *((i, -1) for i in (*JOINTS_R, *JOINTS_L, *JOINT_SPEEDS_R, *JOINT_SPEEDS_L)),
    (COM_X, PELVIS_X),
    (COM_Y, -1),
    (COM_VX, -1),
    (COM_VY, -1),
    *(pair for name in POINTS if name != "pelvis" for pair in ((point(name)[0], PELVIS_X), (point(name)[1], -1))),
    (PSOAS_L, -1),
    (PSOAS_R, -1),
    *((i, -1) for i in OBSTACLE),  # the obstacle's x is already relative to the pelvis
)


def _relative_v1(obs: np.ndarray) -> np.ndarray:
    src = np.array([s for s, _ in _RELATIVE_V1])
    sub = np.array([t for _, t in _RELATIVE_V1])
    out = obs[..., src].astype(np.float64)
    rel = sub >= 0
    out[..., rel] -= obs[..., sub[rel]]
    return out


def _relative_v1_mirror() -> np.ndarray:
    """The task mirror carried over to relative-v1's order (each feature maps to the mirrored source)."""
    task = _task_mirror()
    where = {s: k for k, (s, _) in enumerate(_RELATIVE_V1)}
    return np.array([where[task[s]] for s, _ in _RELATIVE_V1])


#: name -> (size, map over the last axis, mirror permutation of the features)
FEATURES: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray], np.ndarray]] = {
    "task": (TASK_SIZE, lambda obs: np.asarray(obs, dtype=np.float64), _task_mirror()),
    "relative-v1": (len(_RELATIVE_V1), _relative_v1, _relative_v1_mirror()),
}
#: A policy trained on gymnasium envs sees their observations unchanged and has no mirror.
IDENTITY = "task"


def check_features(name: str, env_id: str) -> None:
    """Raise ValueError naming an unknown feature map, or one that needs lrun/Run-v0."""
    if name not in FEATURES:
        raise ValueError(f"policy.features {name!r}: choose one of {', '.join(FEATURES)}")
    if name != IDENTITY and env_id != ENV_ID:
        raise ValueError(f"policy.features {name!r} needs {ENV_ID}, not {env_id!r}")


def feature_size(name: str, task_size: int) -> int:
    """Length of the feature vector for a task observation of `task_size` values."""
    return task_size if name == IDENTITY else FEATURES[name][0]


def features(name: str, obs: np.ndarray) -> np.ndarray:
    """Apply feature map `name` to observations (any leading shape; `task` passes any size through); float64."""
    return FEATURES[name][1](np.asarray(obs))


def observation_mirror(name: str) -> np.ndarray:
    """Permutation p with mirrored_features = features[..., p] (an involution)."""
    return FEATURES[name][2]


def action_mirror(act_size: int = ACT_SIZE) -> np.ndarray:
    """Permutation swapping the right leg's nine muscles with the left leg's."""
    if act_size != 2 * MUSCLES_PER_LEG:
        raise ValueError(f"the mirror needs {2 * MUSCLES_PER_LEG} excitations (RunEnv), got {act_size}")
    return np.concatenate([np.arange(MUSCLES_PER_LEG, act_size), np.arange(MUSCLES_PER_LEG)])
