"""A rank killed with SIGKILL mid-run: the job ends (non-zero) instead of hanging, and --resume completes it with
every iteration's steps stored exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import EXPERIMENTS, LRUN, MPIEXEC, read_until, run, start

from lrun.checkpoint import load_checkpoint
from lrun.store.reader import RunStore


def rank_pids(marker: str) -> dict[int, int]:
    """World rank -> pid of the lrun processes whose command line contains `marker`."""
    pids = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and "mpiexec" not in cmdline and "hydra" not in cmdline:
            for item in environ:
                if item.startswith(b"PMI_RANK="):
                    pids[int(item.split(b"=", 1)[1])] = int(proc.name)
    return pids


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("victim", [2, 0], ids=["simulator", "learner"])
def test_sigkill_of_a_rank_ends_the_job_and_resume_completes(tmp_path, victim):
    run_dir = tmp_path / f"run-{victim}"
    common = [
        LRUN,
        "train",
        str(EXPERIMENTS / "tiny.toml"),
        "--set",
        f"run.run_dir={run_dir}",
        "--set",
        "run.checkpoint_every=2",
    ]
    process = start([MPIEXEC, "-n", "3", *common, "--set", "run.iterations=40"])
    try:
        read_until(process, "iter 3/40")
        pids = rank_pids(str(run_dir))
        assert sorted(pids) == [0, 1, 2], pids
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = time.time()
        process.communicate(timeout=60)
        assert time.time() - killed_at < 60
    finally:
        process.kill()
    assert process.returncode != 0
    reached = load_checkpoint(run_dir)["iteration"]
    assert 2 <= reached < 40
    target = reached + 3
    result = run([MPIEXEC, "-n", "3", *common, "--set", f"run.iterations={target}", "--resume", str(run_dir)])
    assert result.returncode == 0, result.stderr
    with RunStore(run_dir) as store:
        versions = store.steps(["policy_version"])["policy_version"]
        ids = store.episodes(["id"])["id"]
    assert np.array_equal(np.bincount(versions), [2 * 4 * 100] * target)  # tiny.toml: 2 sims x 4 envs x 100
    assert len(np.unique(ids)) == len(ids)
