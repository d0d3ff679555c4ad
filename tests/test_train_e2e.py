"""`lrun train` end to end: real OpenSim envs in real MPI processes, checkpoints, resume, errors, learning."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import EXPERIMENTS, LRUN, MPIEXEC, clean_env, run, sets

from lrun.checkpoint import load_checkpoint

TINY = [
    "--set",
    "env.physics=fast",
    "--set",
    "layout.envs_per_rank=2",
    "--set",
    "layout.steps_per_env=16",
    "--set",
    "ppo.minibatches=4",
    "--set",
    "ppo.epochs=2",
    "--set",
    "policy.hidden_sizes=[32, 32]",
]


def progress(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "progress.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_three_ranks_on_run_v0_checkpoint_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    result = run(
        [MPIEXEC, "-n", "3", LRUN, "train", *TINY, "--set", "run.iterations=2", "--set", f"run.run_dir={run_dir}"]
    )
    assert result.returncode == 0, result.stderr
    assert "1 learner + 2 simulator ranks" in result.stdout
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint["iteration"] == 2 and checkpoint["env_steps"] == 2 * 2 * 2 * 16
    assert checkpoint["meta"]["obs_size"] == 41 and checkpoint["meta"]["act_size"] == 18
    # where and with what it ran: in config.json, the checkpoint and every rank file
    import json
    import socket

    import h5py

    meta = json.loads((run_dir / "config.json").read_text())["metadata"]
    assert meta["hosts"] == [socket.gethostname()] * 3  # every rank's host, in world rank order
    assert meta["versions"]["mpi_library"].startswith("MPICH") and meta["versions"]["torch"]
    assert meta["versions"]["mpi_thread_level"] == "funneled"  # asked for explicitly, not mpi4py's MULTIPLE
    assert len(meta["git"]["commit"]) == 40 and isinstance(meta["git"]["dirty"], bool)
    assert checkpoint["metadata"] == meta
    with h5py.File(run_dir / "trajectories" / "rank-0001.h5") as rank_file:
        assert (
            rank_file.attrs["git/commit"] == meta["git"]["commit"] and rank_file.attrs["hosts"] == socket.gethostname()
        )
    rows = progress(run_dir)
    assert [r["iteration"] for r in rows] == ["1", "2"]
    assert float(rows[0]["time/simulate_s"]) > 0 and float(rows[0]["losses/entropy"]) != 0
    for row in rows:  # the learner's MPI time by operation (lrun bench scaling); one learner: no gradient Allreduce
        assert float(row["time/mpi_bcast_s"]) > 0 and float(row["time/mpi_recv_transfer_s"]) > 0
        assert float(row["time/mpi_recv_wait_s"]) > 0 and float(row["time/mpi_allreduce_s"]) > 0
        assert float(row["time/mpi_gradient_allreduce_s"]) == 0

    result = run(
        [
            MPIEXEC,
            "-n",
            "3",
            LRUN,
            "train",
            *TINY,
            "--set",
            "run.iterations=3",
            "--set",
            f"run.run_dir={run_dir}",
            "--resume",
            str(run_dir),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "resuming at iteration 2 (128 env steps, 128 decisions)" in result.stdout
    assert load_checkpoint(run_dir)["iteration"] == 3
    assert [(r["iteration"], r["env_steps"]) for r in progress(run_dir)] == [("1", "64"), ("2", "128"), ("3", "192")]


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize(
    "ranks, extra, message",
    [
        (2, ["--set", "layout.learners=2"], "leave no simulator rank"),
        (2, ["--set", "ppo.learnin_rate=1"], "unknown config key 'ppo.learnin_rate'"),
        (2, ["--set", "layout.envs_per_rank=0"], "zero envs"),
        (2, ["--set", "layout.ranks=3"], "layout.ranks=3 but the MPI world has 2 ranks"),
        (2, ["--resume", "/nonexistent/run"], "no checkpoint at /nonexistent/run"),
    ],
)
def test_bad_input_fails_fast_on_every_rank_with_one_message(ranks, extra, message, tmp_path):
    result = run(
        [MPIEXEC, "-n", str(ranks), LRUN, "train", *TINY, "--set", f"run.run_dir={tmp_path}", *extra], timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.count(message) == 1, result.stderr  # said once (by rank 0), no traceback
    assert "Traceback" not in result.stderr


def test_plain_srun_style_world_of_one_is_refused(tmp_path):
    env = dict(os.environ, SLURM_STEP_NUM_TASKS="3")
    result = subprocess.run(
        [LRUN, "train", "--set", f"run.run_dir={tmp_path}"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2 and "srun started 3 tasks" in result.stderr


def test_incompatible_checkpoint_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    common = [
        LRUN,
        "train",
        "--set",
        "env.id=gymnasium:Pendulum-v1",
        "--set",
        "run.iterations=1",
        "--set",
        "layout.steps_per_env=16",
        "--set",
        "ppo.minibatches=2",
        "--set",
        f"run.run_dir={run_dir}",
    ]
    assert run(common).returncode == 0
    result = run([*common, "--set", "policy.hidden_sizes=[8]", "--resume", str(run_dir)])
    assert result.returncode == 2 and "does not fit this config: policy.hidden_sizes [64, 64] vs [8]" in result.stderr
    result = run([LRUN, "train", "--resume", str(run_dir)])  # continues in place, with the default env (Run-v0)
    assert result.returncode == 2 and "observation size 3 vs 41" in result.stderr


def test_learning_improves_pendulum_clearly(tmp_path):
    """PPO (serial mode) lifts Pendulum-v1 from about -1200 to better than -400 in ~60k steps."""
    run_dir = tmp_path / "pendulum"
    result = run(
        [
            LRUN,
            "train",
            "--set",
            "env.id=gymnasium:Pendulum-v1",
            "--set",
            "run.iterations=30",
            "--set",
            "layout.envs_per_rank=8",
            "--set",
            "layout.steps_per_env=256",
            "--set",
            "ppo.learning_rate=1e-3",
            "--set",
            "ppo.reward_scale=0.1",
            "--set",
            "ppo.minibatches=32",
            "--set",
            f"run.run_dir={run_dir}",
            "--set",
            "run.seed=1",
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    returns = [float(r["charts/episodic_return"]) for r in progress(run_dir)]
    first, last = sum(returns[:3]) / 3, sum(returns[-3:]) / 3
    assert first < -900, f"an untrained policy should do badly, got {first}"
    assert last > -400 and last > first + 500, f"no clear improvement: {first:.0f} -> {last:.0f}"


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_two_learners_average_gradients_and_stay_in_sync(tmp_path):
    """4 ranks: 2 learners (gradient Allreduce, parameter check every iteration) + 2 simulators."""
    run_dir = tmp_path / "two"
    result = run(
        [
            MPIEXEC,
            "-n",
            "4",
            LRUN,
            "train",
            "--set",
            "env.id=gymnasium:Pendulum-v1",
            "--set",
            "layout.learners=2",
            "--set",
            "layout.envs_per_rank=2",
            "--set",
            "layout.steps_per_env=32",
            "--set",
            "ppo.minibatches=4",
            "--set",
            "run.iterations=3",
            "--set",
            "run.sync_check_every=1",
            "--set",
            f"run.run_dir={run_dir}",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "2 learners + 2 simulator ranks" in result.stdout
    rows = progress(run_dir)
    assert [int(r["env_steps"]) for r in rows] == [128, 256, 384]  # both learners' data counted
    assert all(float(r["time/mpi_gradient_allreduce_s"]) > 0 for r in rows)
    roles = sorted(p.read_text().count('"learner"') for p in (run_dir / "ranks").glob("rank-*.json"))
    assert roles == [0, 0, 1, 1]


def tiny_run(run_dir: Path) -> list[str]:
    """A two-rank training run of a few seconds."""
    return [
        MPIEXEC, "-n", "2", LRUN, "train",
        *sets("env.physics=fast", "layout.envs_per_rank=1", "layout.steps_per_env=16", "ppo.minibatches=2"),
        *sets("run.iterations=3", f"run.run_dir={run_dir}", "run.store_trajectories=false"),
    ]  # fmt: skip


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_the_live_bar_reaches_the_terminal_through_mpiexec_and_a_log_file_gets_lines(tmp_path):
    """Under MPICH's mpiexec rank 0's stdout is a pipe even in a terminal: the bar finds mpiexec's terminal."""
    import pty

    main, secondary = pty.openpty()
    process = subprocess.Popen(
        tiny_run(tmp_path / "tty"), stdin=secondary, stdout=secondary, stderr=secondary, env=clean_env()
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal closed: every writer has exited
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=120) == 0
    text = output.decode()
    assert "\r[#############.......] iter 2/3" in text and "\r[####################] iter 3/3" in text
    os.close(main)
    with open(tmp_path / "log.txt", "w") as log:  # nohup ... > log.txt: one line per iteration
        subprocess.run(tiny_run(tmp_path / "file"), stdout=log, stderr=subprocess.STDOUT, env=clean_env(), timeout=120)
    lines = (tmp_path / "log.txt").read_text()
    assert "\r" not in lines and lines.count("iter ") == 3 and "| elapsed " in lines


FAILING_RUN = """
import signal, sys
from mpi4py import MPI
import lrun.training.loop as t
from lrun.config import build_config

def sentinel(signum, frame):
    pass

signal.signal(signal.SIGUSR1, sentinel)
seen = {}
split_roles = t.lmpi.split_roles

def spy(comm, learners):
    seen["layout"] = split_roles(comm, learners)
    return seen["layout"]

def fail(*args, **kwargs):
    seen["during"] = signal.getsignal(signal.SIGUSR1)
    raise RuntimeError("failed mid-run")

t.lmpi.split_roles, t.run_learner, t.run_simulator = spy, fail, fail
settings = ["env.id=gymnasium:Pendulum-v1", "run.run_dir=" + sys.argv[1], "run.store_trajectories=false"]
config = build_config({}, settings)
try:
    t.train(config)
except RuntimeError:
    pass
comm = seen["layout"].learner_comm
assert seen["during"] is not sentinel, "train() did not take the stop signals over"
assert signal.getsignal(signal.SIGUSR1) is sentinel, "handlers not restored after an exception"
assert comm is None or comm == MPI.COMM_NULL, "learner communicator not freed after an exception"
rank = MPI.COMM_WORLD.Get_rank()
with open(sys.argv[1] + f"-rank{rank}.txt", "w") as out:
    out.write(seen["layout"].role)
"""


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_a_failing_run_gives_back_signal_handlers_and_the_learner_communicator(tmp_path):
    """A host process (a curriculum, a notebook) keeps its own handlers and can run the next stage."""
    script = tmp_path / "failing.py"
    script.write_text(FAILING_RUN)
    result = run([MPIEXEC, "-n", "2", sys.executable, str(script), str(tmp_path / "run")])
    assert result.returncode == 0, result.stdout + result.stderr
    roles = [(tmp_path / f"run-rank{r}.txt").read_text() for r in (0, 1)]
    assert roles == ["learner", "simulator"]  # both ranks got to the end of the checks


def test_bench_train_measures_a_sac_recipe_and_keeps_the_run_where_asked(tmp_path):
    """`lrun bench train CONFIG` runs that config; `--set run.run_dir=DIR` is honoured (the figures are read
    from there), not lost to a temporary directory."""
    kept = tmp_path / "kept"
    small = ["layout.envs_per_rank=1", "layout.steps_per_env=8", "sac.learning_starts=8", "sac.batch_size=8"]
    command = [LRUN, "bench", "train", str(EXPERIMENTS / "recipes" / "walk-sac.toml"), "--ranks", "2"]
    command += ["--iterations", "3", "--env-steps", "50", "--json", str(tmp_path / "f.json")]
    command += [item for key in [*small, f"run.run_dir={kept}"] for item in ("--set", key)]
    result = run(command)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["algorithm"] == "sac" and figures["physics"] == "fast" and figures["run_dir"] == str(kept)
    assert (kept / "progress.csv").is_file() and figures["train_steps_per_s"] > 0
    assert f"run in {kept}" in result.stdout
