"""Reading a run's trajectories: all rank files as one, live while the run trains (SWMR)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lrun.store.dimensions import SCALE_ATTRIBUTES, attach_dimensions, datasets_in, stored_labels
from lrun.store.schema import DIRECTORY, FILE_KIND, MASTER_NAME, READABLE_VERSIONS, SCHEMA_VERSION, dimension_names


class StoreError(RuntimeError):
    """A trajectory file is missing, corrupt, truncated, foreign or from an incompatible schema."""


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_superblock(path: Path) -> None:
    """Raise `StoreError` for a non-HDF5 or truncated file, from the superblock alone.

    Needed because a SWMR reader does not check the file's end (the file may legitimately grow) and reading a
    truncated file in SWMR mode retries without end. A version 2/3 superblock (what lrun writes) records the
    end-of-file address; a live file is never shorter than it, a truncated one is.
    """
    with open(path, "rb") as handle:
        head = handle.read(48)
    if not head.startswith(HDF5_SIGNATURE):
        raise StoreError(f"{path}: not an HDF5 file")
    version, offset_size = head[8], head[9]
    if version >= 2 and offset_size in (4, 8) and len(head) >= 12 + 3 * offset_size:
        start = 12 + 2 * offset_size  # signature, version, sizes, flags, base address, extension address
        eof = int.from_bytes(head[start : start + offset_size], "little")
        size = path.stat().st_size
        if size < eof:
            raise StoreError(f"{path}: truncated HDF5 file ({size} of {eof} bytes)")


def open_h5(path: str | Path) -> h5py.File:
    """Open an lrun HDF5 file for reading (SWMR where possible), or raise `StoreError` naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise StoreError(f"{path}: empty file")
    _check_superblock(path)
    try:
        try:
            f = h5py.File(path, "r", libver="latest", swmr=True)
        except OSError:
            f = h5py.File(path, "r")  # a file written without SWMR (e.g. by another tool)
    except OSError as exc:
        text = str(exc)
        if "signature" in text:
            problem = "not an HDF5 file"
        elif "truncated" in text or "eof" in text.lower():
            problem = "truncated HDF5 file"
        else:
            problem = f"unreadable HDF5 file ({text.splitlines()[0] if text else type(exc).__name__})"
        raise StoreError(f"{path}: {problem}") from None
    return f


def check_file(path: str | Path) -> None:
    """Raise `StoreError` unless `path` is a readable lrun trajectory file of a known schema."""
    with open_h5(path) as f:
        _check_open(f, Path(path))


def _check_open(f: h5py.File, path: Path) -> None:
    kind = f.attrs.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode()
    if kind != FILE_KIND:
        raise StoreError(f"{path}: not an lrun trajectory file (HDF5, but no kind={FILE_KIND!r} attribute)")
    version = int(f.attrs.get("schema_version", -1))
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{path}: schema version {version}, this lrun reads versions {READABLE_VERSIONS} (writes {SCHEMA_VERSION})"
        )
    for group in ("steps", "episodes"):
        if group not in f:
            raise StoreError(f"{path}: damaged: group {group}/ is missing")
    try:
        for group in ("steps", "episodes"):
            for obj in f[group].values():
                _ = obj.shape if isinstance(obj, h5py.Dataset) else len(obj)
    except (OSError, RuntimeError, KeyError) as exc:
        raise StoreError(f"{path}: damaged {group}/ group ({exc})") from None


def rank_files(run_dir: str | Path) -> list[Path]:
    """The run's rank files, sorted."""
    directory = Path(run_dir) / DIRECTORY
    return sorted(directory.glob("rank-*.h5"))


class RunStore:
    """All trajectory files of a run read as one. Re-open (or call `refresh`) to see new data.

    >>> store = RunStore("runs/tiny")
    >>> episodes = store.episodes()                        # dict of columns over every rank
    >>> steps = store.steps(["obs", "reward", "episode_id"])
    >>> one = store.episode(int(episodes["id"][0]))        # its steps and its table row
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        if self.run_dir.is_file():
            raise StoreError(f"{self.run_dir} is a file, not a run directory (name the directory of the run)")
        if not self.run_dir.is_dir():
            raise StoreError(f"{self.run_dir}: no such run directory")
        self.paths = rank_files(self.run_dir)
        if not self.paths:
            raise StoreError(f"{self.run_dir}: no trajectory files in {DIRECTORY}/")
        self.files: list[h5py.File] = []
        try:
            for path in self.paths:
                f = open_h5(path)
                self.files.append(f)
                _check_open(f, path)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every file."""
        for f in self.files:
            f.close()
        self.files = []

    def refresh(self) -> None:
        """See rows appended since opening (SWMR)."""
        for f in self.files:
            for group in ("steps", "episodes"):
                for ds in datasets_in(f[group]).values():
                    ds.refresh()

    @property
    def attrs(self) -> dict[str, Any]:
        """The first rank file's attributes (config JSON, versions, checksum), decoded."""
        out = {}
        for key, value in self.files[0].attrs.items():
            out[key] = value.decode() if isinstance(value, bytes) else value
        return out

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config the run was started with."""
        return json.loads(self.attrs.get("config", "{}"))

    def _columns(self, group: str, names: list[str] | None) -> dict[str, np.ndarray]:
        per_file = []
        for f, path in zip(self.files, self.paths):
            g = f[group]
            available = list(datasets_in(g))
            wanted = names or available
            missing = [n for n in wanted if n not in available]
            if missing:
                raise StoreError(f"{path}: {group}/ has no dataset(s) {missing}; it has {available}")
            n_rows = min(g[n].shape[0] for n in available)  # a live file may be mid-append: trim to complete rows
            try:
                per_file.append({n: g[n][:n_rows] for n in wanted})
            except (OSError, RuntimeError) as exc:
                raise StoreError(f"{path}: cannot read {group}/ ({str(exc).splitlines()[0]})") from None
        return {n: np.concatenate([cols[n] for cols in per_file]) for n in per_file[0]}

    def steps(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Step columns over all ranks (rank files in order, each in step order)."""
        return self._columns("steps", names)

    def episodes(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Episode-table columns over all ranks."""
        return self._columns("episodes", names)

    @property
    def labels(self) -> dict[str, list[str]]:
        """The labelled axes (axis name -> labels): `observation` (the 41 names for RunEnv), `action` (the 18
        muscles), `obstacle_field`, `leg`."""
        return stored_labels(self.files[0])

    def steps_dataframe(self, names: list[str] | None = None) -> Any:
        """Step columns as a pandas DataFrame (`pip install -e '.[analysis]'`); a column with one value per
        observation or excitation becomes one column each, named by the stored labels (`obs_knee_r`,
        `excitations_glut_max_r`; index numbers where an axis has no labels)."""
        return to_dataframe(self.steps(names), self._column_axes("steps"))

    def episodes_dataframe(self, names: list[str] | None = None) -> Any:
        """Episode-table columns as a pandas DataFrame (`psoas_left`, `obstacles_0_radius`, `final_obs_knee_r`)."""
        return to_dataframe(self.episodes(names), self._column_axes("episodes"))

    def _column_axes(self, group: str) -> dict[str, list[list[str]]]:
        """dataset name -> the labels of each of its axes after the row axis."""
        labels = self.labels
        out = {}
        for name, ds in datasets_in(self.files[0][group]).items():
            dims = dimension_names(group, name)
            if dims is not None and len(dims) == ds.ndim:
                out[name] = [labels.get(dim) or [str(i) for i in range(n)] for dim, n in zip(dims[1:], ds.shape[1:])]
        return out

    def recent_steps(self, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw observations of the most recent policy versions (at most `max_rows` rows over all ranks) and the
        episode id of each row (rows of one episode in time order), for a feature map that remembers earlier
        observations (`lrun.env.features.episode_features`). Behavioural cloning learns on these.

        Whole iterations are taken, newest first (a rank file's steps are in policy-version order, so each
        file contributes a tail)."""
        versions = [f["steps/policy_version"][: f["steps/obs"].shape[0]] for f in self.files]
        every = np.concatenate(versions) if versions else np.zeros(0, np.int32)
        if len(every) == 0:
            raise StoreError(f"{self.run_dir}: the store holds no steps")
        unique, counts = np.unique(every, return_counts=True)
        newest_first = np.cumsum(counts[::-1])
        keep = max(int(np.searchsorted(newest_first, max_rows, side="right")), 1)  # at least one iteration
        threshold = unique[::-1][keep - 1]
        parts, ids = [], []
        for f, v, path in zip(self.files, versions, self.paths):
            first = int(np.searchsorted(v, threshold))  # v is non-decreasing within a file
            try:
                parts.append(f["steps/obs"][first : len(v)])
                ids.append(f["steps/episode_id"][first : len(v)])
            except (OSError, RuntimeError, KeyError) as exc:
                raise StoreError(
                    f"{path}: cannot read steps/obs and steps/episode_id ({str(exc).splitlines()[0]})"
                ) from None
        return np.concatenate(parts)[-max_rows:], np.concatenate(ids)[-max_rows:]

    def episode(self, episode_id: int) -> dict[str, Any]:
        """One episode: {"row": its table row, "steps": its steps in order}. Raises StoreError if unknown."""
        for f, path in zip(self.files, self.paths):
            ids = f["episodes/id"][:]
            hits = np.flatnonzero(ids == episode_id)
            if len(hits) == 0:
                continue
            i = int(hits[0])
            row = {name: ds[i] for name, ds in f["episodes"].items()}
            lo, hi = int(row["start_step"]), int(row["end_step"]) + 1
            steps_group = f["steps"]
            mask = steps_group["episode_id"][lo:hi] == episode_id
            steps = {name: ds[lo:hi][mask] for name, ds in datasets_in(steps_group).items()}
            row["file"] = str(path)
            return {"row": row, "steps": steps}
        raise StoreError(f"{self.run_dir}: no finished episode with id {episode_id}")


def to_dataframe(columns: dict[str, np.ndarray], axes: dict[str, list[list[str]]] | None = None) -> Any:
    """numpy columns (one row per step or episode) as a pandas DataFrame, wide columns flattened: column
    `name_<label>` per value, the labels from `axes` (dataset -> labels of each trailing axis), else indices."""
    try:
        import pandas
    except ImportError:
        raise StoreError("DataFrames need pandas: pip install -e '.[analysis]' (or use the numpy columns)") from None
    flat: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        if values.ndim == 1:
            flat[name] = values
        else:
            trailing = values.shape[1:]
            known = (axes or {}).get(name)
            if known is None or [len(a) for a in known] != list(trailing):
                known = [[str(i) for i in range(n)] for n in trailing]
            wide = values.reshape(len(values), -1)
            for i, index in enumerate(np.ndindex(*trailing)):
                flat[f"{name}_" + "_".join(known[axis][j] for axis, j in enumerate(index))] = wide[:, i]
    return pandas.DataFrame(flat)


def write_master(run_dir: str | Path) -> Path:
    """(Re)write trajectories/master.h5: virtual datasets that present every rank file's data as one.

    Sizes are those of the rank files now; the master is rewritten at every checkpoint and at the end of a run.
    Sources are named relative to the master, so the directory can be moved or copied as a whole.
    """
    run_dir = Path(run_dir)
    paths = rank_files(run_dir)
    if not paths:
        raise StoreError(f"{run_dir}: no trajectory files to join")
    directory = run_dir / DIRECTORY
    sizes: list[dict[str, tuple]] = []
    dtypes: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    labels: dict[str, list[str]] = {}
    meanings: dict[str, dict[str, Any]] = {}
    for path in paths:
        with open_h5(path) as f:
            _check_open(f, path)
            if not attrs:
                attrs = dict(f.attrs)
                labels = stored_labels(f)
                meanings = {
                    f"{group}/{name}": {k: v for k, v in ds.attrs.items() if k not in SCALE_ATTRIBUTES}
                    for group in ("steps", "episodes")
                    for name, ds in datasets_in(f[group]).items()
                }
            shapes = {}
            for group in ("steps", "episodes"):
                datasets = datasets_in(f[group])
                complete = min((ds.shape[0] for ds in datasets.values()), default=0)  # a live file: whole rows
                for name, ds in datasets.items():
                    shapes[f"{group}/{name}"] = (complete, *ds.shape[1:])
                    dtypes[f"{group}/{name}"] = ds.dtype
            sizes.append(shapes)
    tmp = directory / f".{MASTER_NAME}.tmp-{os.getpid()}"
    with h5py.File(tmp, "w", libver="latest") as master:
        for key, value in attrs.items():
            master.attrs[key] = value
        master.attrs["kind"] = "lrun-trajectories-master"
        master.attrs["rank_files"] = json.dumps([p.name for p in paths])
        for key in sizes[0]:
            total = sum(s[key][0] for s in sizes)
            layout = h5py.VirtualLayout(shape=(total, *sizes[0][key][1:]), dtype=dtypes[key])
            offset = 0
            for path, s in zip(paths, sizes):
                n = s[key][0]
                if n:
                    layout[offset : offset + n] = h5py.VirtualSource(path.name, key, shape=s[key])[:n]
                offset += n
            virtual = master.create_virtual_dataset(key, layout)
            for attr, value in meanings.get(key, {}).items():
                virtual.attrs[attr] = value  # the rank files' `meaning` (and any other) attributes, as promised
        attach_dimensions(master, labels)
    target = directory / MASTER_NAME
    os.replace(tmp, target)
    return target
