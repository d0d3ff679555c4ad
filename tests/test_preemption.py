"""A signal (Slurm's preemption warning, scancel's SIGTERM, Ctrl-C) ends a run at the next iteration boundary
with a checkpoint, exit code 3 and a consistent store; --resume then completes it with no step lost or repeated."""

from __future__ import annotations

import re
import signal

import numpy as np
import pytest
from helpers import EXPERIMENTS, LRUN, MPIEXEC, run, signal_after

from lrun.checkpoint import load_checkpoint
from lrun.store.reader import RunStore, rank_files

STEPS_PER_FILE_AND_ITERATION = 4 * 100  # tiny.toml: 4 envs x 100 steps per simulator


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_checkpoints_stops_and_resume_completes(tmp_path, sig):
    run_dir = tmp_path / "run"
    common = [
        LRUN,
        "train",
        str(EXPERIMENTS / "tiny.toml"),
        "--set",
        f"run.run_dir={run_dir}",
        "--set",
        "run.checkpoint_every=50",
    ]
    # mpiexec forwards the signal to every rank; rank 0 decides
    stopped = signal_after([MPIEXEC, "-n", "3", *common, "--set", "run.iterations=40"], "iter 2/40", sig, timeout=60)
    out, err = stopped.stdout, stopped.stderr
    assert stopped.returncode == 3, err
    stopped_at = int(re.search(r"checkpoint at iteration (\d+) written", out).group(1))
    assert 2 <= stopped_at < 40
    assert load_checkpoint(run_dir)["iteration"] == stopped_at  # though checkpoint_every is 50
    with RunStore(run_dir) as store:
        versions = store.steps(["policy_version"])["policy_version"]
    assert np.array_equal(np.bincount(versions), [2 * STEPS_PER_FILE_AND_ITERATION] * stopped_at)
    assert (run_dir / "trajectories" / "master.h5").is_file()

    target = stopped_at + 2
    result = run([MPIEXEC, "-n", "3", *common, "--set", f"run.iterations={target}", "--resume", str(run_dir)])
    assert result.returncode == 0, result.stderr
    with RunStore(run_dir) as store:
        versions = store.steps(["policy_version"])["policy_version"]
        episode_ids = store.episodes(["id"])["id"]
    assert np.array_equal(np.bincount(versions), [2 * STEPS_PER_FILE_AND_ITERATION] * target)  # none lost/repeated
    assert len(np.unique(episode_ids)) == len(episode_ids)
    assert len(rank_files(run_dir)) == 2
