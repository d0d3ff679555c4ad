"""The SAC replay buffer on disk, beside the checkpoints, so a resumed or requeued run keeps what it learnt from.

One HDF5 file per learner, `checkpoints/replay-LLL.h5`, mirrors the learner's ring buffer slot for slot: the
datasets `obs`, `next_obs` (features before normalisation, as the buffer keeps them), `actions`, `rewards` and
`terminated`, grown to the buffer's size (never past its capacity). A sync writes only the slots filled since the
previous one (a few MB per checkpoint), so it costs almost nothing next to an iteration.

A crash can stop a sync half-way, leaving rows whose `obs` is new and whose `next_obs` is old. So a sync first
records the slots it is about to write (`dirty_start`, `dirty_stop`; flushed and fsynced), writes them (flushed
and fsynced), and only then records the new size and clears the mark; a load drops rows still marked. A first
or whole write goes to a temporary file renamed over the old one. Rank 0 writes the checkpoint before the
learners sync, so after a crash between the two the file is a checkpoint behind (the next checkpoint's rows are
missing, the run collects them again); a run resumed from an older `iter-*.pt` gets the later rows as well:
valid transitions of the same run, which an off-policy learner may learn from like any other.
"""

from __future__ import annotations

import os
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
    collected: int  # of those, at most this many were collected by simulators (not mirror images)
    iteration: int  # the iteration of the sync that wrote the file
    dropped: int  # rows an interrupted sync left half-written
    exact: bool  # slot for slot the file's layout (else the next sync rewrites the file whole)


def durable(f: h5py.File) -> None:
    """Flush HDF5's buffers and fsync the file, so what follows cannot reach the disk before it."""
    f.flush()
    os.fsync(f.id.get_vfd_handle())


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
        if new is not None and new < buffer.size and self.path.is_file():
            with h5py.File(self.path, "r+") as f:
                if self._fits(f):
                    self._write_new(f, new, iteration)
                    self.synced = buffer.added
                    return new
        self._write_whole(iteration)
        self.synced = buffer.added
        return buffer.size

    def _fits(self, f: h5py.File) -> bool:
        """The file is this buffer's, slot for slot, as of the last sync."""
        return (
            f.attrs.get("format") == FORMAT
            and int(f.attrs["capacity"]) == self.buffer.capacity
            and int(f.attrs["added"]) == self.synced
            and all(f[name].shape[1:] == getattr(self.buffer, name).shape[1:] for name in FIELDS)
        )

    def _write_new(self, f: h5py.File, new: int, iteration: int) -> None:
        capacity = self.buffer.capacity
        start = (self.buffer.cursor - new) % capacity
        stop = start + new  # may run past the end of the ring: written in two pieces
        if new:
            f.attrs["dirty_start"], f.attrs["dirty_stop"] = start, stop
            durable(f)
            self._write_slots(f, start, min(stop, capacity))
            self._write_slots(f, 0, stop - capacity)
            durable(f)
        self._finish(f, iteration)

    def _write_whole(self, iteration: int) -> None:
        buffer = self.buffer
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["capacity"] = buffer.capacity
            for name in FIELDS:
                array = getattr(buffer, name)
                chunks = (min(CHUNK_ROWS, buffer.capacity), *array.shape[1:])
                maxshape = (buffer.capacity, *array.shape[1:])
                f.create_dataset(name, (0, *array.shape[1:]), array.dtype, maxshape=maxshape, chunks=chunks)
            self._write_slots(f, 0, buffer.size)
            self._finish(f, iteration)
        tmp.replace(self.path)  # a crash leaves the previous file whole

    def _write_slots(self, f: h5py.File, start: int, stop: int) -> None:
        if stop <= start:
            return
        for name in FIELDS:
            dataset = f[name]
            if dataset.shape[0] < stop:
                dataset.resize(stop, axis=0)
            dataset[start:stop] = getattr(self.buffer, name)[start:stop]

    def _finish(self, f: h5py.File, iteration: int) -> None:
        for name in ("size", "cursor", "added", "collected"):
            f.attrs[name] = getattr(self.buffer, name)
        f.attrs["iteration"] = iteration
        f.attrs["dirty_start"] = f.attrs["dirty_stop"] = 0
        durable(f)


def load_replay(path: str | Path, buffer: ReplayBuffer) -> Restored:
    """Fill an empty `buffer` from a replay file; rows a crashed sync left half-written are dropped. Loaded into
    a buffer of another capacity, or with rows dropped, the transitions are laid out oldest first (the newest
    kept where the buffer is smaller), so the next adds still overwrite the oldest. Raises `ReplayFileError` for
    a file that is corrupt or made for other shapes."""
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
            short = [name for name in FIELDS if f[name].shape[0] < size]
            if short or not 0 <= cursor < max(capacity, 1) or size > capacity:
                raise ReplayFileError(f"{path}: inconsistent (size {size}, cursor {cursor}, short {short})")
            keep = np.ones(size, bool)
            start, stop = int(f.attrs["dirty_start"]), int(f.attrs["dirty_stop"])
            for a, b in ((start, min(stop, capacity)), (0, max(stop - capacity, 0))):
                keep[a : min(b, size)] = False
            oldest = cursor if size == capacity else 0  # a full ring's oldest slot is where it writes next
            rows = np.flatnonzero(keep)
            rows = rows[np.argsort((rows - oldest) % max(size, 1), kind="stable")][-buffer.capacity :]
            exact = len(rows) == size and capacity == buffer.capacity
            arrays = {name: f[name][:size] for name in FIELDS}
            iteration = int(f.attrs["iteration"])
            added, collected = int(f.attrs["added"]), int(f.attrs["collected"])
    except (OSError, KeyError, ValueError) as exc:
        raise ReplayFileError(f"{path}: corrupt or unreadable replay file ({exc})") from exc
    n = len(rows)
    for name, values in arrays.items():
        getattr(buffer, name)[:n] = values if exact else values[rows]
    buffer.size = n
    buffer.cursor = cursor if exact else n % buffer.capacity
    buffer.added = added if exact else n
    buffer.collected = collected
    return Restored(path, n, min(collected, n), iteration, size - int(keep.sum()), exact)
