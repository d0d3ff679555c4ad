"""The HDF5 layout of lrun's trajectory files: every dataset, its dtype and meaning (README mirrors this).

A rank file `trajectories/rank-NNNN.h5` has two groups of equally long, growing 1-D or 2-D datasets:

* `steps/`: one row per agent step, in the order the rank took them.
* `episodes/`: one row per finished episode.

Steps of an episode still running when the run stopped have no row in `episodes/`.

Every axis is named by an HDF5 dimension scale in the root group (netCDF-4's convention, so h5netcdf and xarray
see `step`, `episode`, `observation`, `action`, `obstacle`, `obstacle_field` and `leg` instead of phony
dimensions); `observation`, `action`, `obstacle_field` and `leg` carry labels where the env names them.
"""

from __future__ import annotations

import numpy as np

SCHEMA_VERSION = 3
#: Versions this lrun reads: 1 lacks episodes/sim_steps (it is length x frame_skip there, to within one skip);
#: 1 and 2 lack the dimension scales.
READABLE_VERSIONS = (1, 2, 3)
FILE_KIND = "lrun-trajectories"
MASTER_NAME = "master.h5"
DIRECTORY = "trajectories"

#: step dataset -> (dtype, per-row shape key or (), meaning). Shape keys: "obs", "act" (see SHAPE_DIMS).
STEP_FIELDS: dict[str, tuple[str, str | tuple, str]] = {
    "obs": ("f4", "obs", "observation the policy acted on (raw, not normalised)"),
    "excitations": (
        "f4",
        "act",
        "action applied to the env (after mapping and clipping; for RunEnv the 18 muscle excitations)",
    ),
    "reward": ("f4", (), "reward the env returned for this step"),
    "terminated": ("u1", (), "1 if the episode ended in a terminal state (fall, integrator failure)"),
    "truncated": ("u1", (), "1 if the episode hit its time limit"),
    "value": ("f4", (), "critic's value of the observation"),
    "logprob": ("f4", (), "log-probability of the sampled action under the acting policy"),
    "env_index": ("i2", (), "index of the env within its simulator rank"),
    "episode_id": ("i8", (), "episode identifier, unique in the run: simulator index * 2**32 + counter"),
    "step_in_episode": ("i4", (), "0-based index of the step within its episode"),
    "policy_version": ("i4", (), "training iteration whose policy acted (0-based)"),
}
#: Named reward components are stored as steps/reward_terms/<name> (f4), e.g. delta_x, ligament_penalty.
REWARD_TERMS_GROUP = "reward_terms"

#: episode dataset -> (dtype, per-row shape key or (), meaning). Shape keys: "obstacles" (W, 3), "obs", "legs".
EPISODE_FIELDS: dict[str, tuple[str, str | tuple, str]] = {
    "id": ("i8", (), "episode identifier (matches steps/episode_id)"),
    "env_index": ("i2", (), "index of the env within its simulator rank"),
    "seed": ("i8", (), "seed the env was reset with; re-creates the obstacle layout and psoas strengths"),
    "difficulty": ("i1", (), "task difficulty 0, 1 or 2 (-1 for non-lrun envs)"),
    "n_obstacles": ("i2", (), "number of obstacles"),
    "obstacles": ("f8", "obstacles", "obstacles as (x, y, radius) rows, NaN-padded to max_obstacles"),
    "psoas": ("f8", "legs", "psoas strength (left, right)"),
    "integrator": ("S24", (), "integrator method (physics)"),
    "accuracy": ("f8", (), "integrator accuracy (physics)"),
    "frame_skip": ("i2", (), "env steps (0.01 s each) per agent step"),
    "return": ("f8", (), "sum of rewards (shaped, where the run shapes its reward)"),
    "task_return": ("f8", (), "sum of the task's own rewards (progress minus ligament penalty for RunEnv)"),
    "length": ("i4", (), "agent steps (decisions; each lasts frame_skip env steps)"),
    "sim_steps": ("i4", (), "simulated env steps of 0.01 s (length x frame_skip, less if it ended mid-skip)"),
    "distance": ("f8", (), "final pelvis x (m); NaN for non-lrun envs"),
    "fell": ("u1", (), "1 if the episode ended by falling (pelvis below 0.65 m)"),
    "integrator_failure": ("u1", (), "1 if the integrator failed and ended the episode"),
    "start_step": ("i8", (), "row of the episode's first step in this file's steps/"),
    "end_step": ("i8", (), "row of the episode's last step in this file's steps/"),
    "policy_version": ("i4", (), "training iteration in which the episode ended"),
    "wall_time_s": ("f8", (), "wall-clock seconds from the episode's reset to its end"),
    "end_time": ("f8", (), "Unix time when the episode ended"),
    "final_obs": ("f4", "obs", "observation after the last step (before the auto-reset)"),
}


#: Name of the first axis of every dataset in a group (its rows).
ROW_DIMS = {"steps": "step", "episodes": "episode"}
#: Names of the axes after the first, by shape key.
SHAPE_DIMS: dict[str, tuple[str, ...]] = {
    "obs": ("observation",),
    "act": ("action",),
    "obstacles": ("obstacle", "obstacle_field"),
    "legs": ("leg",),
}
#: Labels of the axes whose meaning does not depend on the env (RunEnv adds `observation` and `action`).
FIXED_LABELS: dict[str, tuple[str, ...]] = {"obstacle_field": ("x", "y", "radius"), "leg": ("left", "right")}


def row_shape(shape: str | tuple, obs_size: int, act_size: int, max_obstacles: int) -> tuple[int, ...]:
    """Concrete per-row shape of a field."""
    if shape == "obs":
        return (obs_size,)
    if shape == "act":
        return (act_size,)
    if shape == "obstacles":
        return (max(max_obstacles, 1), 3)
    if shape == "legs":
        return (2,)
    return tuple(shape)


def dimension_names(group: str, name: str) -> tuple[str, ...] | None:
    """Axis names of dataset `group/name` (e.g. ("step", "observation") for steps/obs); None if unknown."""
    fields = {"steps": STEP_FIELDS, "episodes": EPISODE_FIELDS}[group]
    if group == "steps" and name.startswith(REWARD_TERMS_GROUP + "/"):
        return (ROW_DIMS[group],)
    if name not in fields:
        return None
    shape = fields[name][1]
    return (ROW_DIMS[group], *(SHAPE_DIMS[shape] if isinstance(shape, str) else ()))


def empty_rows(fields: dict, n: int, obs_size: int, act_size: int, max_obstacles: int) -> dict[str, np.ndarray]:
    """Zero-filled arrays for `n` rows of every field."""
    return {
        name: np.zeros((n, *row_shape(shape, obs_size, act_size, max_obstacles)), dtype=dtype)
        for name, (dtype, shape, _) in fields.items()
    }
