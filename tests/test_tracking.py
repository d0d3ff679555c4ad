"""Experiment tracking: TensorBoard event files beside progress.csv, Weights & Biases offline, and the message
when the optional packages are missing."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest
from helpers import EXPERIMENTS, LRUN, ROOT, clean_env, sets

from lrun.config import ConfigError, build_config
from lrun.logger import TENSORBOARD_OFF, ProgressLogger
from lrun.store.reader import RunStore

TINY = [
    str(EXPERIMENTS / "tiny.toml"),
    *sets("layout.envs_per_rank=1", "ppo.steps_per_env=40", "ppo.minibatches=2", "run.checkpoint_every=1"),
]


def train(run_dir, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [LRUN, "train", *TINY, *sets(f"run.run_dir={run_dir}"), "--progress", "lines", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env or clean_env())


def scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_has_every_logged_scalar_at_its_env_step_and_a_resume_purges_lost_steps(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    result = train(run_dir, *sets("run.iterations=3"))
    assert result.returncode == 0, result.stderr
    with open(run_dir / "progress.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    board = scalars(run_dir / "tb")
    logged = {k for k, v in rows[-1].items() if k not in ("iteration", "env_steps") and v not in ("", "nan")}
    assert logged <= set(board)  # the same names as progress.csv
    assert {"charts/learning_rate", "charts/policy_std", "losses/old_approx_kl", "charts/steps_per_s"} <= set(board)
    steps = [int(r["env_steps"]) for r in rows]
    assert [s for s, _ in board["losses/value_loss"]] == steps  # step = simulated env steps
    assert board["losses/value_loss"][-1][1] == pytest.approx(float(rows[-1]["losses/value_loss"]), rel=1e-5)
    # a run killed after its checkpoint at iteration 2 lost iteration 3; the resume's events replace it
    (run_dir / "checkpoints" / "checkpoint.pt").unlink()
    (run_dir / "checkpoints" / "iter-000002.pt").rename(run_dir / "checkpoints" / "checkpoint.pt")
    again = train(run_dir, "--resume", str(run_dir), *sets("run.iterations=4"))
    assert again.returncode == 0, again.stderr
    values = scalars(run_dir / "tb")["losses/value_loss"]
    assert [s for s, _ in values] == [*steps[:2], steps[2], steps[2] + steps[0]]  # no step twice


def test_without_tensorboard_lrun_says_so_once_and_carries_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    out = io.StringIO()
    logger = ProgressLogger(tmp_path, 3, out, progress="lines", tensorboard=True)
    for i in (1, 2):
        logger.log({"iteration": i, "env_steps": 10 * i, "losses/value_loss": 0.5})
    logger.close()
    assert out.getvalue().count(TENSORBOARD_OFF) == 1
    assert len((tmp_path / "progress.csv").read_text().splitlines()) == 3 and not (tmp_path / "tb").exists()


def test_weights_and_biases_offline_writes_its_run_directory(tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    env = dict(clean_env(), WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    result = train(run_dir, *sets("run.iterations=2"), "--track", "lrun-test", env=env)
    assert result.returncode == 0, result.stderr
    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    assert b"losses/value_loss" in runs[0].read_bytes()  # the scalars were mirrored (then: wandb sync)


def test_tracking_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"set run\.tensorboard = true too"):
        build_config({}, ["run.wandb_project=x", "run.tensorboard=false"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the wandb package: pip install -e '.\[track\]'"):
        build_config({}, ["run.wandb_project=x"])


def test_a_failing_tensorboard_writer_stops_tensorboard_not_the_run(tmp_path):
    """A full disk can reach TensorBoard's writer first: lrun says so once and goes on with progress.csv."""
    pytest.importorskip("tensorboard")
    out = io.StringIO()
    logger = ProgressLogger(tmp_path, 3, out, progress="lines", tensorboard=True)
    logger.log({"iteration": 1, "env_steps": 10, "losses/value_loss": 0.5})
    assert logger.board is not None

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    logger.board.add_scalar = full
    for i in (2, 3):
        logger.log({"iteration": i, "env_steps": 10 * i, "losses/value_loss": 0.5})
    logger.close()
    assert out.getvalue().count("TensorBoard logging stopped ([Errno 28] No space left on device)") == 1
    assert len((tmp_path / "progress.csv").read_text().splitlines()) == 4


def test_a_run_without_any_optional_extra_trains_stores_and_reports(tmp_path):
    """With the extras made unimportable in every process (tests/bare, as `make test-bare` does), a run trains,
    says once that TensorBoard is off, stores its trajectories, and an MP4 request gets the one-line hint."""
    env = dict(clean_env(), PYTHONPATH=str(ROOT / "tests" / "bare"))
    run_dir = tmp_path / "run"
    result = train(run_dir, *sets("run.iterations=2", "ppo.steps_per_env=150"), env=env)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count(TENSORBOARD_OFF) == 1
    assert not (run_dir / "tb").exists() and (run_dir / "trajectories" / "master.h5").is_file()
    with RunStore(run_dir) as store:
        episode = int(store.episodes(["id"])["id"][0])
    video = subprocess.run(
        [LRUN, "render", str(run_dir), "--episode", str(episode), "-o", str(tmp_path / "a.mp4")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert video.returncode == 2 and "pip install imageio-ffmpeg" in video.stderr
    assert len(video.stderr.strip().splitlines()) == 1
