"""Writing a simulator rank's trajectory file: chunked, compressed, SWMR (readable while it grows)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lrun.store.dimensions import attach_dimensions, copy_attributes, datasets_in, stored_labels
from lrun.store.reader import StoreError, check_file, open_h5
from lrun.store.schema import (
    EPISODE_FIELDS,
    FILE_KIND,
    REWARD_TERMS_GROUP,
    SCHEMA_VERSION,
    STEP_FIELDS,
    row_shape,
)

CHUNK_ROWS = 1024
COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


class TrajectoryWriter:
    """Appends blocks of steps and episode rows to one rank's file; flushes make them visible to readers.

    The file is opened in SWMR mode: another process can read it (`h5py.File(..., swmr=True)`) while it grows,
    and after a crash (even `kill -9`) it still opens and holds everything up to the last flush. `labels` name
    the entries of the `observation` and `action` axes (RunEnv's observation and muscle names).
    """

    def __init__(
        self,
        path: str | Path,
        obs_size: int,
        act_size: int,
        max_obstacles: int,
        reward_terms: tuple[str, ...],
        attrs: dict[str, Any],
        labels: dict[str, Sequence[str]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        if not fresh:
            check_file(self.path)
        self.file = h5py.File(self.path, "a", libver="latest")
        try:
            if fresh:
                self._create(obs_size, act_size, max_obstacles, reward_terms, attrs)
                attach_dimensions(self.file, labels)  # attributes: before SWMR mode, which forbids adding them
            else:
                self._check_fits(obs_size, act_size, reward_terms)
            self.file.swmr_mode = True
        except BaseException:
            self.file.close()
            raise
        self.steps = self.file["steps"]
        self.episodes = self.file["episodes"]
        self.terms = list(reward_terms)

    def _create(
        self, obs_size: int, act_size: int, max_obstacles: int, reward_terms: tuple[str, ...], attrs: dict[str, Any]
    ) -> None:
        f = self.file
        f.attrs["kind"] = FILE_KIND
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["obs_size"] = obs_size
        f.attrs["act_size"] = act_size
        f.attrs["max_obstacles"] = max_obstacles
        f.attrs["reward_terms"] = json.dumps(list(reward_terms))
        for key, value in attrs.items():
            f.attrs[key] = value
        for group_name, fields in (("steps", STEP_FIELDS), ("episodes", EPISODE_FIELDS)):
            group = f.create_group(group_name)
            for name, (dtype, shape, meaning) in fields.items():
                rest = row_shape(shape, obs_size, act_size, max_obstacles)
                ds = group.create_dataset(
                    name,
                    shape=(0, *rest),
                    maxshape=(None, *rest),
                    dtype=dtype,
                    chunks=(CHUNK_ROWS, *rest),
                    **COMPRESSION,
                )
                ds.attrs["meaning"] = meaning
        terms = f["steps"].create_group(REWARD_TERMS_GROUP)
        for name in reward_terms:
            ds = terms.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype="f4", chunks=(CHUNK_ROWS,), **COMPRESSION
            )
            ds.attrs["meaning"] = f"reward component {name!r} of each step"

    def _check_fits(self, obs_size: int, act_size: int, reward_terms: tuple[str, ...]) -> None:
        a = self.file.attrs
        stored_terms = json.loads(a["reward_terms"])
        if (int(a["obs_size"]), int(a["act_size"]), stored_terms) != (obs_size, act_size, list(reward_terms)):
            raise StoreError(
                f"{self.path}: written by a run with obs size {a['obs_size']}, action size "
                f"{a['act_size']}, reward terms {stored_terms}; cannot append obs size {obs_size}, "
                f"action size {act_size}, reward terms {list(reward_terms)}"
            )

    @property
    def n_steps(self) -> int:
        """Rows in steps/."""
        return int(self.steps["reward"].shape[0])

    def next_episode_counter(self, simulator_index: int) -> int:
        """First unused episode counter of this simulator (ids continue after a resume)."""
        ids = self.steps["episode_id"][:]
        base = simulator_index * 2**32
        mine = ids[(ids >= base) & (ids < base + 2**32)]
        return int(mine.max() - base + 1) if mine.size else 0

    @property
    def n_episodes(self) -> int:
        """Rows in episodes/."""
        return int(self.episodes["id"].shape[0])

    @staticmethod
    def _append(group: h5py.Group, columns: dict[str, np.ndarray]) -> None:
        n = len(next(iter(columns.values())))
        if n == 0:
            return
        for name, values in columns.items():
            ds = group[name]
            start = ds.shape[0]
            ds.resize(start + n, axis=0)
            ds[start:] = values

    def append_steps(self, columns: dict[str, np.ndarray], reward_terms: dict[str, np.ndarray]) -> None:
        """Append rows to every steps/ dataset (all columns the same length)."""
        self._append(self.steps, columns)
        if self.terms:
            self._append(self.steps[REWARD_TERMS_GROUP], {k: reward_terms[k] for k in self.terms})

    def append_episodes(self, columns: dict[str, np.ndarray]) -> None:
        """Append finished-episode rows."""
        self._append(self.episodes, columns)

    def flush(self) -> None:
        """Make everything appended so far durable and visible to SWMR readers."""
        self.file.flush()

    def close(self) -> None:
        """Flush and close."""
        if self.file.id.valid:
            self.file.flush()
            self.file.close()


def cut_back(path: str | Path, iteration: int) -> tuple[int, int]:
    """Remove every step of policy version >= `iteration` and every episode that ended there or later.

    Used on `--resume` from a checkpoint taken after `iteration` iterations, so the store holds exactly the
    steps the checkpoint accounts for: a resumed run has no duplicated and no missing steps.
    Returns the (steps, episodes) kept.
    """
    check_file(path)
    with open_h5(path) as f:
        lengths = [ds.shape[0] for ds in datasets_in(f["steps"]).values()]
        # policy_version is appended last: after a crash mid-append it is never longer than the other columns
        versions = f["steps/policy_version"][: min(lengths)]
        keep_steps = int(np.searchsorted(versions, iteration, side="left"))
        end_steps = f["episodes/end_step"][:]
        keep_episodes = int(np.count_nonzero(end_steps < keep_steps))
        if not np.all(end_steps[:keep_episodes] < keep_steps):  # rows are in end order; be safe
            raise StoreError(f"{path}: episode rows are not in step order")
    _truncate(Path(path), keep_steps, keep_episodes)
    return keep_steps, keep_episodes


def keep_finished_episodes(path: str | Path) -> tuple[int, int]:
    """Remove the steps after the last finished episode (an episode cut short when its writer was killed).

    Used when `lrun eval --resume` continues an evaluation: every episode left in the file is whole and has its
    row in episodes/, so the resumed evaluation runs the cut one again from its start. Returns the (steps,
    episodes) kept.
    """
    check_file(path)
    keep_steps, keep_episodes = finished_extent(path)
    _truncate(Path(path), keep_steps, keep_episodes)  # also when nothing is cut: it leaves the file writable
    return keep_steps, keep_episodes


def finished_extent(path: str | Path) -> tuple[int, int]:
    """The (steps, episodes) of a rank file up to its last finished episode, read only (a file being written
    can be read: SWMR)."""
    with open_h5(path) as f:
        # a crash mid-append can leave one column longer than another: count the rows every column holds
        n_steps = min(ds.shape[0] for ds in datasets_in(f["steps"]).values())
        n_episodes = min(ds.shape[0] for ds in datasets_in(f["episodes"]).values())
        end_steps = f["episodes/end_step"][:n_episodes]
        lengths = f["episodes/length"][:n_episodes]
    # a finished row ends within the steps, after the row before it, and has steps (a row whose data a kill
    # left unwritten reads as zeros); the rows from the first one that fails are not finished
    whole = (end_steps < n_steps) & (lengths >= 1) & (np.diff(end_steps, prepend=-1) > 0)
    keep_episodes = int(np.argmin(whole)) if not whole.all() else n_episodes
    keep_steps = int(end_steps[keep_episodes - 1]) + 1 if keep_episodes else 0
    return keep_steps, keep_episodes


def _truncate(path: Path, keep_steps: int, keep_episodes: int) -> None:
    """Cut every steps/ dataset to `keep_steps` rows and every episodes/ dataset to `keep_episodes`."""
    try:
        with h5py.File(path, "a", libver="latest") as f:
            for group, keep in (("steps", keep_steps), ("episodes", keep_episodes)):
                for ds in datasets_in(f[group]).values():
                    ds.resize(keep, axis=0)
    except OSError:
        # A writer killed while in SWMR mode leaves the file marked "open for writing"; HDF5 then refuses to
        # open it for writing again. Its data up to the last flush is intact: copy what we keep to a new file.
        _rewrite(path, {"steps": keep_steps, "episodes": keep_episodes})


def _rewrite(path: Path, keep: dict[str, int]) -> None:
    """Copy the first keep[group] rows of every dataset (and every attribute) into a fresh file in place."""
    tmp = path.with_name(f".{path.name}.rewrite-{os.getpid()}")
    with open_h5(path) as src, h5py.File(tmp, "w", libver="latest") as dst:
        copy_attributes(src, dst)
        named = any(ds.dims[0] for ds in datasets_in(src["steps"]).values())
        for group, rows in keep.items():
            for name, ds in datasets_in(src[group]).items():
                out = dst.create_dataset(
                    f"{group}/{name}",
                    data=ds[:rows],
                    maxshape=(None, *ds.shape[1:]),
                    chunks=ds.chunks,
                    compression=ds.compression,
                    compression_opts=ds.compression_opts,
                    shuffle=ds.shuffle,
                )
                copy_attributes(ds, out)
        if named:  # a file of schema 1 or 2 stays as it was
            attach_dimensions(dst, stored_labels(src))
    os.replace(tmp, path)
