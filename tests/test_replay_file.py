"""The SAC replay buffer's file: slot for slot the buffer after a sync, only the new slots written, a sync a
crash interrupts never hands back a half-written transition, and a buffer of another size still evicts the
oldest transitions first."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from lrun.learn.sac import ReplayBuffer
from lrun.store.replay import ReplayFile, ReplayFileError, load_replay


def fill(buffer: ReplayBuffer, first: int, n: int, collected: bool = True) -> None:
    """Transitions numbered first..first+n-1: every field of transition k holds k (next_obs k + 0.5)."""
    ids = np.arange(first, first + n, dtype=np.float32)
    obs = np.repeat(ids[:, None], buffer.obs.shape[1], 1)
    actions = np.repeat(ids[:, None], buffer.actions.shape[1], 1)
    buffer.add(obs, actions, ids, obs + 0.5, (ids % 2).astype(np.float32), collected)


def same(a: ReplayBuffer, b: ReplayBuffer) -> None:
    assert (a.size, a.cursor, a.added, a.collected) == (b.size, b.cursor, b.added, b.collected)
    for name in ("obs", "next_obs", "actions", "rewards", "terminated"):
        assert np.array_equal(getattr(a, name)[: a.size], getattr(b, name)[: b.size]), name


def assert_file_holds(path, buffer: ReplayBuffer) -> None:
    """The file loads into a buffer equal to `buffer`."""
    loaded = ReplayBuffer(buffer.capacity, buffer.obs.shape[1], buffer.actions.shape[1])
    load_replay(path, loaded)
    same(buffer, loaded)


def held(buffer: ReplayBuffer) -> list[int]:
    """The transitions' numbers, oldest first."""
    oldest = buffer.cursor if buffer.size == buffer.capacity else 0
    order = (np.arange(buffer.size) + oldest) % buffer.capacity
    return buffer.rewards[order].astype(int).tolist()


def test_a_synced_buffer_comes_back_slot_for_slot_across_wraps_and_only_new_slots_are_written(tmp_path):
    buffer = ReplayBuffer(10, 3, 2)
    path = tmp_path / "replay-000.h5"
    file = ReplayFile(path, buffer)
    fill(buffer, 0, 4)
    assert file.sync(1) == 4  # the first sync writes the file whole
    fill(buffer, 4, 3, collected=False)  # mirror images: stored, not counted as collected
    with h5py.File(path, "r+") as f:
        f["rewards"][0] = -7.0  # a mark in a slot the next sync has no business writing
    assert file.sync(2) == 3
    with h5py.File(path, "r") as f:
        assert f["rewards"][0] == -7.0 and f["rewards"][6] == 6.0
        f_collected = f.attrs["collected"]
    assert f_collected == 4
    buffer.rewards[0] = -7.0  # (the buffer agrees again, for the comparison below)
    fill(buffer, 7, 5)  # wraps: slots 7, 8, 9, then 0, 1
    assert file.sync(3) == 5
    assert file.sync(4) == 0
    back = ReplayBuffer(10, 3, 2)
    restored = load_replay(path, back)
    assert (restored.transitions, restored.iteration, restored.dropped, restored.exact) == (10, 4, 0, True)
    same(buffer, back)
    assert held(back) == list(range(2, 12))  # 0 and 1 were overwritten
    assert np.array_equal(back.next_obs[:, 0], back.rewards + 0.5)
    # the restored buffer goes on where the old one stopped, and so does its file
    again = ReplayFile(path, back)
    again.mark_synced()
    fill(back, 12, 3)
    assert again.sync(5) == 3
    assert_file_holds(path, back)


def test_a_sync_a_crash_interrupts_leaves_its_rows_marked_and_a_load_drops_them(tmp_path, monkeypatch):
    buffer = ReplayBuffer(8, 2, 1)
    path = tmp_path / "replay-000.h5"
    file = ReplayFile(path, buffer)
    fill(buffer, 0, 6)
    file.sync(1)
    fill(buffer, 6, 4)  # slots 6, 7, then 0, 1 (transitions 0 and 1 overwritten)
    written = ReplayFile._write_slots

    def dies_in_the_second_piece(self, f, start, stop):
        if start == 0 and stop > 0:
            f["obs"][0] = -1.0  # one field of slot 0 written, the others not
            raise OSError("killed mid-write")
        written(self, f, start, stop)

    monkeypatch.setattr(ReplayFile, "_write_slots", dies_in_the_second_piece)
    with pytest.raises(OSError, match="killed"):
        file.sync(2)
    monkeypatch.undo()
    back = ReplayBuffer(8, 2, 1)
    restored = load_replay(path, back)
    # the file still says 6 rows (slots 0..5), of which slots 0 and 1 are marked: 2..5 come back, oldest first
    assert (restored.transitions, restored.dropped, restored.exact) == (4, 2, False)
    assert held(back) == [2, 3, 4, 5]
    assert np.array_equal(back.obs[: back.size, 0], back.rewards[: back.size])
    file = ReplayFile(path, back)  # not marked synced: its layout changed, so it is written whole
    fill(back, 6, 1)
    assert file.sync(2) == 5
    assert_file_holds(path, back)


@pytest.mark.parametrize("capacity, kept", [(4, [5, 6, 7, 8]), (6, [3, 4, 5, 6, 7, 8]), (9, [3, 4, 5, 6, 7, 8])])
def test_a_buffer_of_another_size_keeps_the_newest_and_evicts_the_oldest_next(tmp_path, capacity, kept):
    buffer = ReplayBuffer(6, 2, 1)
    fill(buffer, 0, 5)
    fill(buffer, 5, 4)  # a wrapped ring: holds 3..8, the oldest (3) in slot 3
    ReplayFile(tmp_path / "r.h5", buffer).sync(1)
    other = ReplayBuffer(capacity, 2, 1)
    load_replay(tmp_path / "r.h5", other)
    assert held(other) == kept
    fill(other, 9, 1)
    assert held(other) == [*kept, 9][-capacity:]  # the oldest went first, if one had to


def test_corrupt_or_foreign_replay_files_are_refused_clearly(tmp_path):
    path = tmp_path / "replay-000.h5"
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(ReplayFileError, match="corrupt or unreadable"):
        load_replay(path, ReplayBuffer(4, 2, 1))
    buffer = ReplayBuffer(4, 2, 1)
    fill(buffer, 0, 3)
    ReplayFile(path, buffer).sync(1)
    with pytest.raises(ReplayFileError, match="2 features and 1 actions, the run has 3"):
        load_replay(path, ReplayBuffer(4, 3, 1))
    with h5py.File(path, "r+") as f:  # a size the datasets do not have
        f["rewards"].resize(2, axis=0)
    with pytest.raises(ReplayFileError, match="inconsistent"):
        load_replay(path, ReplayBuffer(4, 2, 1))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something else"
    with pytest.raises(ReplayFileError, match="not an lrun replay file"):
        load_replay(tmp_path / "other.h5", ReplayBuffer(4, 2, 1))
