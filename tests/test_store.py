"""HDF5 trajectory store: round trip, virtual master, resume cut-off, SWMR live reads, kill -9, replay, render,
reports and clear errors on bad files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from lrun.analysis.common import wilson_interval
from lrun.analysis.render import render_gif, render_strip
from lrun.analysis.replay import replay_episode
from lrun.analysis.report import build_report, windowed_mean
from lrun.env.features import TASK_NAMES
from lrun.store.dimensions import datasets_in
from lrun.store.reader import RunStore, StoreError, check_file, write_master
from lrun.store.schema import EPISODE_FIELDS, SCHEMA_VERSION, STEP_FIELDS, empty_rows
from lrun.store.writer import TrajectoryWriter, cut_back, keep_finished_episodes

LRUN = str(Path(sys.executable).parent / "lrun")
OBS, ACT, MAX_OBST = 41, 18, 3


def fake_steps(rng: np.random.Generator, n: int, version: int, first_row: int = 0) -> dict[str, np.ndarray]:
    rows = empty_rows(STEP_FIELDS, n, OBS, ACT, MAX_OBST)
    for name, array in rows.items():
        rows[name] = (rng.normal(size=array.shape) * 10).astype(array.dtype)
    rows["policy_version"][:] = version
    rows["episode_id"][:] = first_row + np.arange(n) // 7
    return rows


def fake_episodes(rng: np.random.Generator, n: int, end_steps: list[int]) -> dict[str, np.ndarray]:
    rows = empty_rows(EPISODE_FIELDS, n, OBS, ACT, MAX_OBST)
    for name, array in rows.items():
        if array.dtype.kind == "S":
            rows[name][:] = b"rk-merson"
        else:
            rows[name] = (rng.normal(size=array.shape) * 10).astype(array.dtype)
    rows["end_step"][:] = end_steps
    return rows


def make_writer(path: Path) -> TrajectoryWriter:
    return TrajectoryWriter(
        path,
        OBS,
        ACT,
        MAX_OBST,
        ("delta_x", "ligament_penalty"),
        {"lrun_version": "test", "config": json.dumps({"env": {"id": "lrun/Run-v0"}})},
    )


def test_every_field_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    steps = fake_steps(rng, 50, version=0)
    terms = {"delta_x": rng.normal(size=50).astype("f4"), "ligament_penalty": rng.random(50).astype("f4")}
    episodes = fake_episodes(rng, 4, [5, 10, 20, 40])
    writer = make_writer(tmp_path / "trajectories" / "rank-0001.h5")
    writer.append_steps(steps, terms)
    writer.append_episodes(episodes)
    writer.close()
    with RunStore(tmp_path) as store:
        got_steps = store.steps()
        got_episodes = store.episodes()
        assert store.config == {"env": {"id": "lrun/Run-v0"}}
    for name, values in steps.items():
        assert np.array_equal(got_steps[name], values), name
    for name, values in terms.items():
        assert np.array_equal(got_steps[f"reward_terms/{name}"], values), name
    for name, values in episodes.items():
        assert np.array_equal(got_episodes[name], values), name
    assert set(got_steps) == set(STEP_FIELDS) | {"reward_terms/delta_x", "reward_terms/ligament_penalty"}
    with h5py.File(tmp_path / "trajectories" / "rank-0001.h5") as f:
        assert f["steps/obs"].compression == "gzip" and f["steps/obs"].chunks[0] > 1
        assert f.attrs["schema_version"] == SCHEMA_VERSION == 3 and f["steps/obs"].attrs["meaning"]


def test_a_version_1_store_still_reads_and_an_unknown_version_is_refused(tmp_path):
    """Version 1 (before episodes/sim_steps) stays readable; other versions get a one-line error."""
    rng = np.random.default_rng(0)
    path = tmp_path / "trajectories" / "rank-0001.h5"
    writer = make_writer(path)
    terms = {"delta_x": np.zeros(10, "f4"), "ligament_penalty": np.zeros(10, "f4")}
    writer.append_steps(fake_steps(rng, 10, version=0), terms)
    writer.append_episodes(fake_episodes(rng, 1, [9]))
    writer.close()
    with h5py.File(path, "a") as f:
        del f["episodes/sim_steps"]
        f.attrs["schema_version"] = 1
    with RunStore(tmp_path) as store:
        assert "sim_steps" not in store.episodes() and len(store.episodes()["id"]) == 1
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 7
    with pytest.raises(StoreError, match="schema version 7, this lrun reads versions"):
        RunStore(tmp_path)


def test_virtual_master_presents_three_rank_files_as_one(tmp_path):
    rng = np.random.default_rng(1)
    parts = []
    for rank, n in ((1, 30), (2, 0), (3, 45)):
        writer = make_writer(tmp_path / "trajectories" / f"rank-{rank:04d}.h5")
        steps = fake_steps(rng, n, version=0)
        writer.append_steps(steps, {"delta_x": np.ones(n, "f4") * rank, "ligament_penalty": np.zeros(n, "f4")})
        writer.append_episodes(fake_episodes(rng, rank, list(range(rank))))
        writer.close()
        parts.append(steps)
    master = write_master(tmp_path)
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path, moved)  # sources are relative: the copy reads its own rank files
    os.chdir("/")
    with h5py.File(moved / "trajectories" / master.name, "r") as f:
        assert f["steps/obs"].shape == (75, OBS)
        assert np.array_equal(f["steps/obs"][:], np.concatenate([p["obs"] for p in parts]))
        assert np.array_equal(f["steps/reward_terms/delta_x"][:], np.r_[np.ones(30), np.ones(45) * 3])
        assert f["episodes/id"].shape == (6,)
        assert json.loads(f.attrs["rank_files"]) == ["rank-0001.h5", "rank-0002.h5", "rank-0003.h5"]
        # the master carries the rank files' attributes on every dataset, `meaning` included
        with h5py.File(moved / "trajectories" / "rank-0001.h5", "r") as rank_file:
            for group in ("steps", "episodes"):
                for name in datasets_in(rank_file[group]):
                    assert f[group][name].attrs["meaning"] == rank_file[group][name].attrs["meaning"], name
        assert "ligament" in f["steps/reward_terms/ligament_penalty"].attrs["meaning"]


def axis_names(ds: h5py.Dataset) -> list[str]:
    """Names of the scales attached to each axis of `ds` (the scale datasets' names, as netCDF reads them)."""
    return [dim[0].name.lstrip("/") if len(dim) else "" for dim in ds.dims]


def test_every_axis_is_named_by_a_dimension_scale(tmp_path):
    """h5py sees named axes; labelled axes carry their labels; a cut-back file and the master keep them."""
    rng = np.random.default_rng(3)
    path = tmp_path / "trajectories" / "rank-0001.h5"
    muscles = [f"muscle_{i}" for i in range(ACT)]
    writer = TrajectoryWriter(path, OBS, ACT, MAX_OBST, ("delta_x",), {"config": "{}"}, {"action": muscles})
    for version in range(3):
        writer.append_steps(fake_steps(rng, 10, version), {"delta_x": np.zeros(10, "f4")})
    writer.append_episodes(fake_episodes(rng, 2, [9, 19]))
    writer.close()
    write_master(tmp_path)
    cut_back(path, 2)
    for name in (path, tmp_path / "trajectories" / "master.h5"):
        with h5py.File(name, "r") as f:
            assert axis_names(f["steps/obs"]) == ["step", "observation"]
            assert axis_names(f["steps/excitations"]) == ["step", "action"]
            assert axis_names(f["steps/reward"]) == ["step"]
            assert axis_names(f["steps/reward_terms/delta_x"]) == ["step"]
            assert axis_names(f["episodes/obstacles"]) == ["episode", "obstacle", "obstacle_field"]
            assert axis_names(f["episodes/psoas"]) == ["episode", "leg"]
            assert axis_names(f["episodes/final_obs"]) == ["episode", "observation"]
            assert [v.decode() for v in f["action"][:]] == muscles
            assert [v.decode() for v in f["obstacle_field"][:]] == ["x", "y", "radius"]
            assert f["steps/obs"].shape[0] == (20 if name == path else 30)
    with pytest.raises(ValueError, match="3 labels for axis 'action' of length 18"):
        TrajectoryWriter(tmp_path / "other.h5", OBS, ACT, MAX_OBST, (), {}, {"action": ["a", "b", "c"]})


def test_xarray_reads_named_axes_of_a_rank_file_and_the_master(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    rng = np.random.default_rng(4)
    muscles = [f"muscle_{i}" for i in range(ACT)]
    for rank in (1, 2):
        writer = TrajectoryWriter(
            tmp_path / "trajectories" / f"rank-{rank:04d}.h5", OBS, ACT, MAX_OBST, ("delta_x",), {}, {"action": muscles}
        )
        steps = fake_steps(rng, 10 * rank, 0)
        writer.append_steps(steps, {"delta_x": np.full(10 * rank, rank, "f4")})
        writer.append_episodes(fake_episodes(rng, rank, list(range(rank))))
        writer.close()
    write_master(tmp_path)
    with xr.open_dataset(tmp_path / "trajectories" / "rank-0002.h5", group="steps", engine="h5netcdf") as ds:
        assert ds.excitations.dims == ("step", "action") and ds.sizes["step"] == 20
        assert np.array_equal(ds.excitations.values, steps["excitations"])
    with xr.open_datatree(tmp_path / "trajectories" / "master.h5", engine="h5netcdf") as tree:
        assert tree["steps"].obs.dims == ("step", "observation") and tree["steps"].sizes["step"] == 30
        assert tree["steps"].excitations.sel(action="muscle_5").shape == (30,)
        assert tree["episodes"].obstacles.dims == ("episode", "obstacle", "obstacle_field")
        assert list(tree["episodes"].obstacle_field.values) == ["x", "y", "radius"]
        assert tree["steps/reward_terms"].delta_x.values.tolist() == [1.0] * 10 + [2.0] * 20


def test_cut_back_removes_everything_after_the_checkpoint(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "trajectories" / "rank-0001.h5"
    writer = make_writer(path)
    for version in range(4):
        writer.append_steps(
            fake_steps(rng, 10, version), {"delta_x": np.zeros(10, "f4"), "ligament_penalty": np.zeros(10, "f4")}
        )
    writer.append_episodes(fake_episodes(rng, 3, [9, 19, 35]))
    writer.close()
    assert cut_back(path, 2) == (20, 2)
    with RunStore(tmp_path) as store:
        steps = store.steps()
        assert np.array_equal(np.unique(steps["policy_version"]), [0, 1])
        assert all(len(v) == 20 for v in steps.values())
        assert list(store.episodes(["end_step"])["end_step"]) == [9, 19]


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time, numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import fake_steps, make_writer
    from pathlib import Path
    writer = make_writer(Path({path!r}))
    rng = np.random.default_rng(0)
    zeros = {{"delta_x": np.zeros(100, "f4"), "ligament_penalty": np.zeros(100, "f4")}}
    for block in range({blocks}):
        writer.append_steps(fake_steps(rng, 100, block), zeros)
        writer.flush()
        print(block, flush=True)
        time.sleep({pause})
    writer.append_steps(fake_steps(rng, 100, 99), zeros)  # appended, never flushed
    print("unflushed", flush=True)
    time.sleep(60)
    """
)


def start_writer(path: Path, blocks: int, pause: float) -> subprocess.Popen:
    script = WRITER_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path), blocks=blocks, pause=pause)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def test_live_swmr_read_while_writing(tmp_path):
    path = tmp_path / "trajectories" / "rank-0001.h5"
    writer = start_writer(path, blocks=6, pause=0.3)
    try:
        assert writer.stdout.readline().strip() == "0"
        with RunStore(tmp_path) as store:
            seen = [len(store.steps(["reward"])["reward"])]
            deadline = time.time() + 30
            while seen[-1] < 600 and time.time() < deadline:
                time.sleep(0.1)
                store.refresh()
                seen.append(len(store.steps(["reward"])["reward"]))
        assert seen[0] >= 100 and seen[-1] == 600
        assert len(set(seen)) >= 3, f"the reader never saw the file grow: {seen}"
    finally:
        writer.kill()
        writer.wait()


def test_kill_9_leaves_a_readable_file_with_every_flushed_step(tmp_path):
    path = tmp_path / "trajectories" / "rank-0001.h5"
    writer = start_writer(path, blocks=3, pause=0.0)
    try:
        while writer.stdout.readline().strip() != "unflushed":
            pass
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    finally:
        writer.kill()
    check_file(path)
    with RunStore(tmp_path) as store:
        versions = store.steps(["policy_version"])["policy_version"]
    assert len(versions) >= 300 and np.array_equal(np.unique(versions[:300]), [0, 1, 2])
    assert cut_back(path, 2)[0] == 200  # a file left open for writing is rewritten: its axes keep their names
    with h5py.File(path, "r") as f:
        assert axis_names(f["steps/obs"]) == ["step", "observation"] and f["steps/obs"].shape[0] == 200
        assert axis_names(f["episodes/psoas"]) == ["episode", "leg"]


EPISODE_WRITER_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import fake_episodes, fake_steps, make_writer
    from pathlib import Path
    writer = make_writer(Path({path!r}))
    rng = np.random.default_rng(0)
    zeros = {{"delta_x": np.zeros(10, "f4"), "ligament_penalty": np.zeros(10, "f4")}}
    for episode in range(3):  # as lrun eval writes them: an episode's steps, its row, a flush
        writer.append_steps(fake_steps(rng, 10, 0), zeros)
        row = fake_episodes(rng, 1, [10 * episode + 9])
        row["length"][:] = 10
        writer.append_episodes(row)
        writer.flush()
    writer.append_steps(fake_steps(rng, 10, 0), zeros)  # a fourth episode's steps, its row never written
    writer.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_an_episode_cut_short_by_kill_9_is_removed_and_the_file_takes_more(tmp_path):
    path = tmp_path / "trajectories" / "rank-0000.h5"
    script = EPISODE_WRITER_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    assert subprocess.run([sys.executable, "-c", script]).returncode == -signal.SIGKILL
    with RunStore(tmp_path) as store:
        assert len(store.steps(["reward"])["reward"]) == 40  # the cut episode's steps were flushed
    assert keep_finished_episodes(path) == (30, 3)
    assert keep_finished_episodes(path) == (30, 3)  # nothing more to cut
    writer = make_writer(path)  # writable again (kill -9 left it marked open for writing)
    rng = np.random.default_rng(1)
    writer.append_steps(fake_steps(rng, 5, 0), {"delta_x": np.zeros(5, "f4"), "ligament_penalty": np.zeros(5, "f4")})
    row = fake_episodes(rng, 1, [34])
    row["length"][:] = 5
    writer.append_episodes(row)
    writer.close()
    # a row a kill left unwritten (zeros) is not a finished episode, nor is anything after it
    with h5py.File(path, "a") as f:
        for ds in datasets_in(f["episodes"]).values():
            ds.resize(ds.shape[0] + 1, axis=0)
    assert keep_finished_episodes(path) == (35, 4)
    with RunStore(tmp_path) as store:
        assert all(len(v) == 35 for v in store.steps().values())
        assert list(store.episodes(["end_step"])["end_step"]) == [9, 19, 29, 34]


#: A serial run on lrun/Run-v0 at difficulty 2 with 10 obstacles: 2 envs x 100 steps per iteration.
TRAIN = [LRUN, "train"] + [
    item
    for key in (
        "env.difficulty=2",
        "env.max_obstacles=10",
        "env.physics=fast",
        "layout.envs_per_rank=2",
        "ppo.steps_per_env=100",
        "ppo.minibatches=4",
        "ppo.epochs=1",
    )
    for item in ("--set", key)
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real serial training run on lrun/Run-v0 (difficulty 2, 10 obstacles) that stored its trajectories."""
    run_dir = tmp_path_factory.mktemp("store") / "run"
    command = [
        *TRAIN,
        "--set",
        "run.iterations=3",
        "--set",
        "run.checkpoint_every=2",
        "--set",
        f"run.run_dir={run_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return run_dir


def test_training_stores_every_step_and_episode(trained_run):
    with RunStore(trained_run) as store:
        steps = store.steps()
        episodes = store.episodes()
    assert len(steps["reward"]) == 3 * 2 * 100
    assert np.array_equal(np.bincount(steps["policy_version"]), [200, 200, 200])
    assert len(episodes["id"]) >= 2
    for i in range(len(episodes["id"])):  # each episode's stored steps are complete and consistent
        mask = steps["episode_id"] == episodes["id"][i]
        assert mask.sum() == episodes["length"][i]
        assert np.array_equal(steps["step_in_episode"][mask], np.arange(episodes["length"][i]))
        assert steps["reward"][mask].sum() == pytest.approx(episodes["return"][i], abs=1e-4)
        assert steps["terminated"][mask][-1] == 1 and episodes["fell"][i] == 1
    assert np.all(episodes["n_obstacles"] == 10) and np.all(episodes["difficulty"] == 2)
    assert np.all(
        np.abs(steps["reward"] - (steps["reward_terms/delta_x"] - steps["reward_terms/ligament_penalty"])) < 1e-6
    )
    assert np.all((steps["excitations"] >= 0) & (steps["excitations"] <= 1))
    with h5py.File(trained_run / "trajectories" / "master.h5") as master:
        assert master["steps/reward"].shape == (600,)


def test_a_training_run_labels_observations_and_muscles(trained_run):
    """RunEnv names its 41 observations and 18 muscles; the store's axes carry those names."""
    with h5py.File(trained_run / "trajectories" / "master.h5") as master:
        assert tuple(v.decode() for v in master["observation"][:]) == TASK_NAMES
        muscles = [v.decode() for v in master["action"][:]]
    assert len(muscles) == 18 and "glut_max_r" in muscles and "iliopsoas_l" in muscles
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with xr.open_datatree(trained_run / "trajectories" / "master.h5", engine="h5netcdf") as tree:
        knee = tree["steps"].obs.sel(observation="knee_r")
        assert knee.shape == (600,) and np.all(np.abs(knee.values) < 3.2)  # a joint angle in radians
        assert tree["episodes"].obstacles.sizes == {
            "episode": tree["episodes"].sizes["episode"],
            "obstacle": 10,
            "obstacle_field": 3,
        }


def test_dataframes_of_steps_and_episodes(trained_run, monkeypatch):
    pytest.importorskip("pandas")
    with RunStore(trained_run) as store:
        steps = store.steps_dataframe(["obs", "reward", "episode_id"])
        episodes = store.episodes_dataframe()
        columns = store.steps(["obs", "reward"])
    # columns carry the stored labels: the 41 observation names, the 18 muscles, x/y/radius, left/right
    assert len(steps) == 600 and list(steps.columns[:41]) == [f"obs_{name}" for name in TASK_NAMES]
    assert np.array_equal(steps["obs_pelvis_tx"].to_numpy(), columns["obs"][:, 1])  # pelvis x, as stored
    assert {"psoas_left", "psoas_right", "obstacles_0_x", "obstacles_9_radius", "final_obs_knee_r"} <= set(episodes)
    with RunStore(trained_run) as store:
        muscles = store.steps_dataframe(["excitations"])
        assert list(muscles.columns) == [f"excitations_{m}" for m in store.labels["action"]]
    assert "excitations_glut_max_l" in muscles
    assert np.array_equal(steps["reward"].to_numpy(), columns["reward"])
    # per-episode sums from the DataFrame agree with the episode table
    sums = steps.groupby("episode_id")["reward"].sum()
    first = episodes.iloc[0]
    assert sums[first["id"]] == pytest.approx(first["return"], abs=1e-4)
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)
    with RunStore(trained_run) as store, pytest.raises(StoreError, match=r"pip install -e '.\[analysis\]'"):
        store.episodes_dataframe()


def test_replay_of_a_stored_episode_deviates_by_zero(trained_run):
    with RunStore(trained_run) as store:
        episode_id = int(store.episodes(["id"])["id"][0])
    result = replay_episode(trained_run, episode_id)
    assert result["replayed_steps"] == result["stored_steps"] > 10
    assert result["max_obs_deviation"] == 0.0 and result["max_reward_deviation"] == 0.0
    other = replay_episode(trained_run, episode_id, physics="reference")  # other physics: it departs
    assert other["max_obs_deviation"] > 0
    cli = subprocess.run(
        [LRUN, "replay", str(trained_run), "--episode", str(episode_id)], capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0 and "max observation deviation 0," in cli.stdout


def test_resume_cuts_the_store_back_to_the_checkpoint(trained_run, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(trained_run, run_dir)
    # the run went on to iteration 3 after its checkpoint at 2: resuming from 2 must drop iteration 2's steps
    command = [
        *TRAIN,
        "--set",
        "run.iterations=4",
        "--set",
        f"run.run_dir={run_dir}",
        "--resume",
        str(run_dir / "checkpoints" / "iter-000002.pt"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "kept the 400 steps of iterations < 2" in result.stdout
    with RunStore(run_dir) as store:
        steps = store.steps(["policy_version", "episode_id", "step_in_episode"])
        episodes = store.episodes(["id", "end_step"])
    assert np.array_equal(np.bincount(steps["policy_version"]), [200, 200, 200, 200])  # no gap, no duplicate
    assert len(np.unique(episodes["id"])) == len(episodes["id"])
    assert np.all(episodes["end_step"] < len(steps["policy_version"]))


def test_report_table_and_png_on_a_run(trained_run):
    report = build_report(trained_run)
    assert [r["iteration"] for r in report["iterations"]] == [1, 2, 3]
    assert sum(r["episodes"] for r in report["iterations"]) == report["episodes"]
    assert report["by_difficulty"][0]["difficulty"] == 2 and report["by_difficulty"][0]["fall_rate"] == 1.0
    result = subprocess.run([LRUN, "report", str(trained_run)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "falls (95% CI)" in result.stdout
    with Image.open(trained_run / "report" / "learning_curves.png") as image:
        assert image.format == "PNG" and image.size[0] > 600


def test_wilson_interval():
    assert wilson_interval(0, 0)[0] != wilson_interval(0, 0)[0]  # NaN without data
    lo, hi = wilson_interval(8, 100)
    assert 0.03 < lo < 0.08 < hi < 0.16
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    for n in range(1, 60):  # exactly, for every n (0 of 11 once gave 2.8e-17, 6 of 6 an upper end of 1 - 1e-16)
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_windowed_mean_is_the_mean_over_the_window_s_episodes():
    values = np.array([1.0, np.nan, 4.0, 10.0])  # iteration 2 had no episodes
    episodes = np.array([1, 0, 3, 1])
    trend = windowed_mean(values, episodes, window=2)
    assert trend[0] == 1.0 and trend[1] == 1.0  # a window of one episode; the empty iteration adds nothing
    assert trend[2] == 4.0  # iterations 2-3: 3 episodes of mean 4
    assert trend[3] == (3 * 4.0 + 10.0) / 4  # iterations 3-4, by episodes, not the mean of the two means
    assert np.isnan(windowed_mean(np.array([np.nan]), np.array([0]), window=3)[0])


def test_render_gif_and_strip(trained_run, tmp_path):
    with RunStore(trained_run) as store:
        episodes = store.episodes(["id", "length"])
    episode_id = int(episodes["id"][np.argmax(episodes["length"])])
    gif = render_gif(trained_run, episode_id, tmp_path / "episode.gif", stride=10)
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == len(range(0, int(episodes["length"].max()) + 1, 10))
    strip = render_strip(trained_run, episode_id, tmp_path / "strip.png", frames=4)
    with Image.open(strip) as image:
        assert image.format == "PNG" and image.size[0] > 3 * image.size[1]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "empty"])
def test_bad_files_get_a_clear_error(trained_run, tmp_path, damage):
    run_dir = tmp_path / "damaged"
    shutil.copytree(trained_run, run_dir)
    path = run_dir / "trajectories" / "rank-0000.h5"
    if damage == "garbage":
        path.write_bytes(b"this is not HDF5 at all" * 100)
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif damage == "foreign":
        path.unlink()
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    else:
        path.write_bytes(b"")
    expected = {
        "garbage": "not an HDF5 file",
        "truncated": "truncated|unreadable|damaged",
        "foreign": "not an lrun trajectory file",
        "empty": "empty file",
    }[damage]
    with pytest.raises(StoreError, match=expected) as error:
        RunStore(run_dir).episodes()
    assert "rank-0000.h5" in str(error.value)
    for command in (
        ["report", str(run_dir)],
        ["replay", str(run_dir), "--episode", "0"],
        ["render", str(run_dir), "--episode", "0", "-o", str(tmp_path / "x.gif")],
    ):
        result = subprocess.run([LRUN, *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "rank-0000.h5" in result.stderr and "Traceback" not in result.stderr


def test_unknown_episode_and_missing_run(trained_run, tmp_path):
    with pytest.raises(StoreError, match="no finished episode with id 123456789"):
        replay_episode(trained_run, 123456789)
    with pytest.raises(StoreError, match="no such run directory"):
        RunStore(tmp_path / "nothing")
