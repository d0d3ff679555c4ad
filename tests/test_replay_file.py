"""The SAC replay buffer's file: slot for slot the buffer after a sync, only the new slots written, and a sync a
crash interrupted never hands back a half-written transition."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from lrun.learn.sac import ReplayBuffer
from lrun.store.replay import ReplayFile, ReplayFileError, load_replay


def fill(buffer: ReplayBuffer, first: int, n: int) -> None:
    """Transitions numbered first..first+n-1: every field of transition k holds k (next_obs k + 0.5)."""
    ids = np.arange(first, first + n, dtype=np.float32)
    obs = np.repeat(ids[:, None], buffer.obs.shape[1], 1)
    actions = np.repeat(ids[:, None], buffer.actions.shape[1], 1)
    buffer.add(obs, actions, ids, obs + 0.5, (ids % 2).astype(np.float32))


def same(a: ReplayBuffer, b: ReplayBuffer) -> None:
    assert (a.size, a.cursor, a.added) == (b.size, b.cursor, b.added)
    for name in ("obs", "next_obs", "actions", "rewards", "terminated"):
        assert np.array_equal(getattr(a, name)[: a.size], getattr(b, name)[: b.size]), name


def assert_file_holds(path, buffer: ReplayBuffer) -> None:
    """The file loads into a buffer equal to `buffer`."""
    loaded = ReplayBuffer(buffer.capacity, buffer.obs.shape[1], buffer.actions.shape[1])
    load_replay(path, loaded)
    same(buffer, loaded)


def test_a_synced_buffer_comes_back_slot_for_slot_across_wraps_and_only_new_slots_are_written(tmp_path):
    buffer = ReplayBuffer(10, 3, 2)
    path = tmp_path / "replay-000.h5"
    file = ReplayFile(path, buffer)
    fill(buffer, 0, 4)
    assert file.sync(1) == 4  # the first sync writes the file whole
    fill(buffer, 4, 3)
    assert file.sync(2) == 3
    fill(buffer, 7, 5)  # wraps: slots 7, 8, 9, then 0, 1
    assert file.sync(3) == 5
    assert file.sync(4) == 0
    back = ReplayBuffer(10, 3, 2)
    restored = load_replay(path, back)
    assert (restored.transitions, restored.iteration, restored.dropped, restored.exact) == (10, 4, 0, True)
    same(buffer, back)
    assert sorted(back.rewards.tolist()) == list(range(2, 12))  # 0 and 1 were overwritten
    assert np.array_equal(back.next_obs[:, 0], back.rewards + 0.5)
    # the restored buffer goes on where the old one stopped, and so does its file
    again = ReplayFile(path, back)
    again.mark_synced()
    fill(back, 12, 3)
    assert again.sync(5) == 3
    assert_file_holds(path, back)


def test_rows_an_interrupted_sync_marked_are_dropped_and_the_file_is_then_rewritten_whole(tmp_path):
    buffer = ReplayBuffer(8, 2, 1)
    path = tmp_path / "replay-000.h5"
    file = ReplayFile(path, buffer)
    fill(buffer, 0, 6)
    file.sync(1)
    with h5py.File(path, "r+") as f:  # as a crash leaves it: slots 6..9 (6, 7, then 0, 1) half-written
        f.attrs["dirty_start"], f.attrs["dirty_stop"] = 6, 10
        f["obs"][0] = -1.0
    back = ReplayBuffer(8, 2, 1)
    restored = load_replay(path, back)
    assert (restored.transitions, restored.dropped, restored.exact) == (4, 2, False)
    assert sorted(back.rewards[: back.size].tolist()) == [2, 3, 4, 5]
    assert np.array_equal(back.obs[: back.size, 0], back.rewards[: back.size])
    file = ReplayFile(path, back)  # not marked synced: its layout changed
    fill(back, 6, 1)
    assert file.sync(2) == 5
    assert_file_holds(path, back)


def test_a_smaller_buffer_keeps_the_newest_transitions(tmp_path):
    buffer = ReplayBuffer(6, 2, 1)
    fill(buffer, 0, 5)
    fill(buffer, 5, 4)  # holds 3..8, oldest at the cursor (slot 3)
    ReplayFile(tmp_path / "r.h5", buffer).sync(1)
    small = ReplayBuffer(4, 2, 1)
    load_replay(tmp_path / "r.h5", small)
    assert sorted(small.rewards.tolist()) == [5, 6, 7, 8] and small.size == 4


def test_corrupt_or_foreign_replay_files_are_refused_clearly(tmp_path):
    path = tmp_path / "replay-000.h5"
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(ReplayFileError, match="corrupt or unreadable"):
        load_replay(path, ReplayBuffer(4, 2, 1))
    buffer = ReplayBuffer(4, 2, 1)
    fill(buffer, 0, 2)
    ReplayFile(path, buffer).sync(1)
    with pytest.raises(ReplayFileError, match="2 features and 1 actions, the run has 3"):
        load_replay(path, ReplayBuffer(4, 3, 1))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something else"
    with pytest.raises(ReplayFileError, match="not an lrun replay file"):
        load_replay(tmp_path / "other.h5", ReplayBuffer(4, 2, 1))
