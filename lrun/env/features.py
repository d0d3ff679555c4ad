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
- ``relative-v2``: relative-v1 plus the last obstacle the pelvis passed (x offset from the pelvis, y, radius),
  remembered from earlier observations of the episode. 41 values. The task shows the next obstacle only until
  the pelvis passes it, while the trailing foot has yet to clear it: in 30 round-2 episodes of models/round2,
  43 % of the feet's meetings with obstacles were with one already out of view (`lrun report` of an
  evaluation counts them). The 2017 winner fed its policy per-foot obstacle distances from such a memory.
  A map with memory is applied through a `FeatureStream`, one row per env, which forgets at an episode's end
  (`reset`) and by itself where the pelvis jumps back (a new episode). It remembers what the observation
  showed: a small obstacle that lay behind a bigger one's far edge was never shown, so it is not remembered.

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


#: relative-v2's passed obstacle: forgotten once the pelvis is this far past its centre (no foot reaches back so
#: far), and shown as (-PASSED_RANGE_M, 0, 0), an obstacle of no size out of reach, while there is none.
PASSED_RANGE_M = 2.0
#: The pelvis cannot move this far backwards between two decisions of one episode (falling backwards it moves
#: ~0.1 m per 0.04 s): a jump back this far is a new episode (which starts at x = 0, while a remembered obstacle
#: lies at x >= 1 m). Forwards nothing is inferred: a long frame skip at speed covers more than this.
NEW_EPISODE_JUMP_M = 0.5
#: Two sightings of an obstacle are the same one if its absolute x and radius agree this closely (stored
#: observations are float32; obstacles lie centimetres apart at the least).
SAME_OBSTACLE_M = 1e-3
#: A radius at most this is no obstacle (the task's empty slot (100, 0, 0)).
NO_RADIUS_M = 1e-3

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


#: Memory columns of relative-v2, per row: the obstacle in view (absolute x, y, radius), the last one passed
#: (absolute x, y, radius), the pelvis x last seen. NaN: none (or not seen yet).
_MEMORY = 7
_SEEN, _PASSED, _PELVIS = slice(0, 3), slice(3, 6), 6


def _empty_memory(rows: int) -> np.ndarray:
    return np.full((rows, _MEMORY), np.nan)


def _remember(memory: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """relative-v2's memory after observations `obs` (rows as `memory`'s). Idempotent: remembering the same
    observation twice changes nothing, so a collector may map an observation more than once."""
    memory = memory.copy()
    pelvis = obs[:, PELVIS_X].astype(np.float64)
    with np.errstate(invalid="ignore"):
        jumped = memory[:, _PELVIS] - pelvis > NEW_EPISODE_JUMP_M  # NaN (nothing seen) compares False
    memory[jumped] = np.nan
    dx, y, r = (obs[:, i].astype(np.float64) for i in OBSTACLE)
    real = r > NO_RADIUS_M
    seen = np.where(real[:, None], np.stack([pelvis + dx, y, r], axis=1), np.nan)
    before = memory[:, _SEEN]
    with np.errstate(invalid="ignore"):
        same_real = (np.abs(seen[:, 0] - before[:, 0]) <= SAME_OBSTACLE_M) & (
            np.abs(seen[:, 2] - before[:, 2]) <= SAME_OBSTACLE_M
        )
        changed = ~(same_real | (np.isnan(seen[:, 0]) & np.isnan(before[:, 0])))
        # the task drops an obstacle from view once x + radius < pelvis x: then it was passed; any other change
        # (walking back to an earlier one, a new episode's first) leaves nothing passed
        passed = changed & (before[:, 0] + before[:, 2] < pelvis)
    memory[changed, _PASSED] = np.where(passed[changed, None], before[changed], np.nan)
    memory[:, _SEEN] = seen
    memory[:, _PELVIS] = pelvis
    return memory


def _passed_obstacle(memory: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """(x offset from the pelvis, y, radius) of the remembered passed obstacle, or (-PASSED_RANGE_M, 0, 0)."""
    offset = memory[:, 3] - obs[:, PELVIS_X]
    with np.errstate(invalid="ignore"):
        known = np.isfinite(offset) & (offset >= -PASSED_RANGE_M)
    out = np.zeros((len(obs), 3))
    out[:, 0] = np.where(known, offset, -PASSED_RANGE_M)
    out[:, 1] = np.where(known, memory[:, 4], 0.0)
    out[:, 2] = np.where(known, memory[:, 5], 0.0)
    return out


#: name -> (size, map over the last axis, mirror permutation of the features)
FEATURES: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray], np.ndarray]] = {
    "task": (TASK_SIZE, lambda obs: np.asarray(obs, dtype=np.float64), _task_mirror()),
    "relative-v1": (len(_RELATIVE_V1), _relative_v1, _relative_v1_mirror()),
}
#: Maps with memory: name -> the map whose features they extend (theirs come first, in the same order) and how
#: many they add. Their mirror is the base map's, the added features mirroring to themselves (an obstacle lies
#: across both legs' path).
EXTENSIONS: dict[str, tuple[str, int]] = {"relative-v2": ("relative-v1", 3)}
for _name, (_base, _added) in EXTENSIONS.items():
    _size = FEATURES[_base][0]
    FEATURES[_name] = (
        _size + _added,
        FEATURES[_base][1],  # the base part; FeatureStream appends the remembered part
        np.concatenate([FEATURES[_base][2], np.arange(_size, _size + _added)]),
    )
#: A policy trained on gymnasium envs sees their observations unchanged and has no mirror.
IDENTITY = "task"


def has_memory(name: str) -> bool:
    """Whether feature map `name` remembers earlier observations (it is applied through a `FeatureStream`)."""
    return name in EXTENSIONS


def extension_of(name: str, parent: str) -> int:
    """How many features map `name` appends to map `parent`'s (a policy of `parent` carries into `name` with
    zero weight on them); 0 when they are the same map. ValueError when `name` does not extend `parent`."""
    if name == parent:
        return 0
    base, added = EXTENSIONS.get(name, (None, 0))
    if base != parent:
        raise ValueError(f"policy.features {name!r} does not extend {parent!r}")
    return added


class FeatureStream:
    """The features of `rows` parallel streams of observations (one per env), with the memory map `name` keeps
    between the observations of an episode (none for a map without memory).

    Call it with each new observation of every row (or of the rows named); `reset(rows)` when their episodes end.
    Where a caller cannot say (a user's loop), a jump of the pelvis of more than NEW_EPISODE_JUMP_M starts the
    row afresh by itself."""

    def __init__(self, name: str, rows: int) -> None:
        if name not in FEATURES:
            raise ValueError(f"policy.features {name!r}: choose one of {', '.join(FEATURES)}")
        self.name = name
        self.rows = rows
        self.memory = _empty_memory(rows) if has_memory(name) else None

    def reset(self, rows: np.ndarray | list[int] | None = None) -> None:
        """Forget what the rows (default: all) have seen: their episodes ended."""
        if self.memory is not None:
            self.memory[slice(None) if rows is None else rows] = np.nan

    def __call__(self, obs: np.ndarray, rows: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Features (float64) of observations `obs`, one per row (default: all rows, in order), remembered."""
        obs = np.asarray(obs)
        base = FEATURES[self.name][1](obs)
        if self.memory is None:
            return base
        which = slice(None) if rows is None else rows
        memory = _remember(self.memory[which], obs)
        self.memory[which] = memory
        return np.concatenate([base, _passed_obstacle(memory, obs)], axis=-1)


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
    """Apply feature map `name` to observations (any leading shape; `task` passes any size through); float64.
    A map with memory needs the observations in order: `FeatureStream` or `episode_features`."""
    if has_memory(name):
        raise ValueError(f"policy.features {name!r} remembers earlier observations: map them with a FeatureStream")
    return FEATURES[name][1](np.asarray(obs))


def episode_features(name: str, obs: np.ndarray, episode_ids: np.ndarray) -> np.ndarray:
    """Features of stored observations (rows in time order within each episode, episodes interleaved as a
    store keeps them), each episode's memory starting empty."""
    obs = np.asarray(obs)
    if not has_memory(name):
        return features(name, obs)
    ids = np.asarray(episode_ids).ravel()
    if len(ids) != len(obs):
        raise ValueError(f"{len(obs)} observations but {len(ids)} episode ids")
    out = np.empty((len(obs), FEATURES[name][0]))
    if len(obs) == 0:
        return out
    # One stream row per episode, fed a whole time step at once: row r's position within its episode orders the
    # calls, so there are as many calls as the longest episode has steps, not one per stored row.
    _, episode = np.unique(ids, return_inverse=True)
    by_episode = np.argsort(episode, kind="stable")
    first = np.searchsorted(episode[by_episode], episode[by_episode])
    position = np.empty(len(obs), dtype=np.int64)
    position[by_episode] = np.arange(len(obs)) - first
    by_position = np.argsort(position, kind="stable")
    stream = FeatureStream(name, int(episode.max()) + 1)
    for rows in np.split(by_position, np.cumsum(np.bincount(position))[:-1]):
        out[rows] = stream(obs[rows], rows=episode[rows])
    return out


def observation_mirror(name: str) -> np.ndarray:
    """Permutation p with mirrored_features = features[..., p] (an involution)."""
    return FEATURES[name][2]


def action_mirror(act_size: int = ACT_SIZE) -> np.ndarray:
    """Permutation swapping the right leg's nine muscles with the left leg's."""
    if act_size != 2 * MUSCLES_PER_LEG:
        raise ValueError(f"the mirror needs {2 * MUSCLES_PER_LEG} excitations (RunEnv), got {act_size}")
    return np.concatenate([np.arange(MUSCLES_PER_LEG, act_size), np.arange(MUSCLES_PER_LEG)])
