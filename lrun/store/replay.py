"""The SAC replay buffer on disk, beside the checkpoints, so a resumed or requeued run keeps what it learnt from.

One HDF5 file per learner, `checkpoints/replay-LLL.h5`, mirrors the learner's ring buffer slot for slot: the
datasets `obs`, `next_obs` (features before normalisation, as the buffer keeps them), `actions`, `rewards` and
`terminated`, grown to the buffer's size (never past its capacity). A sync writes only the slots filled since the
previous one (a few MB per checkpoint), so it costs almost nothing next to an iteration.

A crash can stop a sync half-way, leaving rows whose `obs` is new and whose `next_obs` is old. So a sync first
records the slots it is about to write (`dirty_start`, `dirty_stop`, flushed), writes them, then records the new
size and clears the mark; a load drops rows still marked. The file may be an iteration or a checkpoint ahead of
the checkpoint a run resumes from (a crash between the two writes): its extra rows are valid transitions of the
same run, which an off-policy learner may learn from like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from lrun.learn.sac import ReplayBuffer

FORMAT = "lrun-replay-1"
FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated")
CHUNK_ROWS = 4096


class ReplayFileError(RuntimeError):
    """A replay file that cannot be read or does not fit the run's buffer."""


def replay_path(checkpoint_directory: str | Path, learner_index: int) -> Path:
    """Where learner `learner_index` keeps its buffer, beside the run's checkpoints."""
    return Path(checkpoint_directory) / f"replay-{learner_index:03d}.h5"


@dataclass
class Restored:
    """What `load_replay` put back into a buffer."""

    path: Path
    transitions: int
    iteration: int  # the iteration of the sync that wrote the file
    dropped: int  # rows an interrupted sync left half-written
    exact: bool  # slot for slot the file's layout (else the next sync rewrites the file whole)


class ReplayFile:
    """Keeps one learner's `ReplayBuffer` in its file: `sync` after each checkpoint writes what is new."""

    def __init__(self, path: str | Path, buffer: ReplayBuffer) -> None:
        self.path = Path(path)
        self.buffer = buffer
        # buffer.added when the file last matched the buffer; None: the file must be written whole
        self.synced: int | None = None

    def mark_synced(self) -> None:
        """The file holds the buffer as it is now (it was just loaded from this path)."""
        self.synced = self.buffer.added

    def sync(self, iteration: int) -> int:
        """Write the slots filled since the last sync (all of them the first time); returns rows written."""
        buffer = self.buffer
        new = buffer.added - self.synced if self.synced is not None else None
        if new == 0 and self.path.is_file():
            with h5py.File(self.path, "r+") as f:
                f.attrs["iteration"] = iteration
            return 0
        whole = new is None or new >= buffer.size or not self.path.is_file()
        if whole:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with h5py.File(tmp, "w") as f:
                self._create(f)
                self._write_slots(f, 0, buffer.size)
                self._finish(f, iteration)
            tmp.replace(self.path)  # a crash leaves the previous file whole
            written = buffer.size
        else:
            start = (buffer.cursor - new) % buffer.capacity
            with h5py.File(self.path, "r+") as f:
                self._check_layout(f)
                stop = start + new  # may run past the end of the ring: written in two pieces
                f.attrs["dirty_start"], f.attrs["dirty_stop"] = start, stop
                f.flush()
                self._write_slots(f, start, min(stop, buffer.capacity))
                if stop > buffer.capacity:
                    self._write_slots(f, 0, stop - buffer.capacity)
                self._finish(f, iteration)
            written = new
        self.synced = buffer.added
        return written

    def _create(self, f: h5py.File) -> None:
        b = self.buffer
        f.attrs["format"] = FORMAT
        f.attrs["capacity"] = b.capacity
        for name in FIELDS:
            array = getattr(b, name)
            shape = (0, *array.shape[1:])
            chunks = (min(CHUNK_ROWS, b.capacity), *array.shape[1:])
            f.create_dataset(name, shape, array.dtype, maxshape=(b.capacity, *array.shape[1:]), chunks=chunks)

    def _check_layout(self, f: h5py.File) -> None:
        if int(f.attrs["capacity"]) != self.buffer.capacity or f["obs"].shape[1:] != self.buffer.obs.shape[1:]:
            raise ReplayFileError(f"{self.path}: written for another buffer shape")

    def _write_slots(self, f: h5py.File, start: int, stop: int) -> None:
        if stop <= start:
            return
        for name in FIELDS:
            dataset = f[name]
            if dataset.shape[0] < stop:
                dataset.resize(stop, axis=0)
            dataset[start:stop] = getattr(self.buffer, name)[start:stop]

    def _finish(self, f: h5py.File, iteration: int) -> None:
        f.attrs["size"], f.attrs["cursor"] = self.buffer.size, self.buffer.cursor
        f.attrs["added"] = self.buffer.added
        f.attrs["iteration"] = iteration
        f.attrs["dirty_start"] = f.attrs["dirty_stop"] = 0
        f.flush()


def load_replay(path: str | Path, buffer: ReplayBuffer) -> Restored:
    """Fill an empty `buffer` from a replay file; rows a crashed sync left half-written are dropped (the buffer
    is then compacted, so its next sync rewrites the file whole). Raises `ReplayFileError` for a file that is
    corrupt or made for other shapes."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise ReplayFileError(f"{path}: not an lrun replay file")
            size, cursor = int(f.attrs["size"]), int(f.attrs["cursor"])
            capacity = int(f.attrs["capacity"])
            if f["obs"].shape[1:] != buffer.obs.shape[1:] or f["actions"].shape[1:] != buffer.actions.shape[1:]:
                raise ReplayFileError(
                    f"{path}: transitions of {f['obs'].shape[1]} features and {f['actions'].shape[1]} actions, "
                    f"the run has {buffer.obs.shape[1]} and {buffer.actions.shape[1]}"
                )
            keep = np.ones(size, bool)
            start, stop = int(f.attrs["dirty_start"]), int(f.attrs["dirty_stop"])
            for a, b in ((start, min(stop, capacity)), (0, max(stop - capacity, 0))):
                keep[a : min(b, size)] = False
            rows = np.flatnonzero(keep)
            dropped = size - len(rows)
            if len(rows) > buffer.capacity:  # a smaller buffer now: keep the newest rows
                age = (rows - cursor) % max(size, 1)
                rows = np.sort(rows[np.argsort(age)[-buffer.capacity :]])
            arrays = {name: f[name][:size][rows] if len(rows) < size else f[name][:size] for name in FIELDS}
            iteration = int(f.attrs["iteration"])
            added = int(f.attrs.get("added", size))
    except (OSError, KeyError) as exc:
        raise ReplayFileError(f"{path}: corrupt or unreadable replay file ({exc})") from exc
    n = len(rows)
    for name, values in arrays.items():
        getattr(buffer, name)[:n] = values
    buffer.size = n
    exact = n == size and capacity == buffer.capacity
    buffer.cursor = cursor if exact else n % buffer.capacity
    buffer.added = added if exact else n
    return Restored(path, n, iteration, dropped, exact)
