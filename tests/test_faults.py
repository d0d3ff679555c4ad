"""A rank killed with SIGKILL mid-run: the job ends (non-zero) instead of hanging, and --resume completes it with
every iteration's steps stored exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import EXPERIMENTS, LRUN, MPIEXEC, Started, run, sets

from lrun.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
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
    with Started([MPIEXEC, "-n", "3", *common, "--set", "run.iterations=40"]) as started:
        started.read_until("iter 3/40")
        pids = rank_pids(str(run_dir))
        assert sorted(pids) == [0, 1, 2], pids
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = time.time()
        ended = started.finish(timeout=60)
        assert time.time() - killed_at < 60
    assert ended.returncode != 0
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


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path, monkeypatch):
    """In process: the write dies half way (disk full, node lost); the previous checkpoint still loads."""
    import torch

    from lrun import checkpoint

    save_checkpoint(tmp_path, {"iteration": 1, "weights": torch.arange(1000.0)}, 1)
    real_save = torch.save

    def dies_half_way(obj, handle):
        real_save(obj, handle)
        handle.truncate(handle.tell() // 2)
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    message = r"cannot write the checkpoint of iteration 2 \(No space left on device\); the previous checkpoint is"
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(tmp_path, {"iteration": 2, "weights": torch.arange(1000.0) * 2}, 2)
    monkeypatch.undo()
    latest = load_checkpoint(tmp_path)
    assert latest["iteration"] == 1 and torch.equal(latest["weights"], torch.arange(1000.0))
    assert not list((tmp_path / "checkpoints").glob(".*.tmp-*"))  # the half-written file is gone, never renamed
    save_checkpoint(tmp_path, {"iteration": 2, "weights": torch.arange(1000.0) * 2}, 2)
    assert load_checkpoint(tmp_path)["iteration"] == 2


WRITER = """
import sys, torch
from lrun.checkpoint import save_checkpoint
run_dir, first = sys.argv[1], int(sys.argv[2])
for i in range(first, first + 10_000):
    save_checkpoint(run_dir, {"iteration": i, "weights": torch.full((4_000_000,), float(i))}, i)
    print(i, flush=True)
"""


def test_sigkill_during_checkpoint_writes_never_leaves_a_broken_checkpoint(tmp_path):
    """A real process writing 16 MB checkpoints back to back, killed with SIGKILL at arbitrary moments."""
    import subprocess
    import sys

    import torch

    rng = np.random.default_rng(0)
    first = 1
    mid_write = 0
    for _ in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(first)], stdout=subprocess.PIPE, text=True
        )
        writer.stdout.readline()  # one checkpoint is complete
        deadline = time.monotonic() + 30
        while not list((tmp_path / "checkpoints").glob(".*.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.001)  # wait for the next write to begin ...
        time.sleep(float(rng.uniform(0.0, 0.02)))  # ... and kill it somewhere inside
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        mid_write += bool(list((tmp_path / "checkpoints").glob(".*.tmp-*")))  # killed inside a write
        latest = load_checkpoint(tmp_path)
        i = latest["iteration"]
        assert i >= first and torch.equal(latest["weights"], torch.full((4_000_000,), float(i)))
        for path in (tmp_path / "checkpoints").glob("iter-*.pt"):  # every kept iteration file is whole too
            assert load_checkpoint(path)["iteration"] == int(path.stem.split("-")[1])
        first = i + 1
    assert mid_write >= 1  # kills really landed inside writes


def test_soak_bench_reports_every_rank(tmp_path):
    result = run([LRUN, "bench", "soak", "--steps", "1000", "--json", str(tmp_path / "soak.json")])
    assert result.returncode == 0, result.stderr
    import json

    figures = json.loads((tmp_path / "soak.json").read_text())
    assert [r["role"] for r in figures["ranks"]] == ["learner", "simulator", "simulator"]
    assert figures["episodes"] > 0 and all(r["rss_end_mb"] > 100 for r in figures["ranks"])
    assert "goal < 20 MB" in result.stdout


def test_integrator_failures_end_episodes_are_counted_and_never_end_the_run(tmp_path):
    """Fault injection (a NaN velocity every 20th step) through real OpenSim integration in a training run."""
    import csv

    run_dir = tmp_path / "faulty"
    settings = sets(
        "env.physics=fast",
        "env.kwargs={fault_every = 20}",
        "layout.envs_per_rank=2",
        "ppo.steps_per_env=50",
        "ppo.minibatches=4",
        "ppo.epochs=1",
        "run.iterations=2",
        f"run.run_dir={run_dir}",
    )
    result = run([LRUN, "train", *settings])
    assert result.returncode == 0, result.stderr
    with open(run_dir / "progress.csv") as handle:
        logged = sum(int(row["charts/integrator_failures"]) for row in csv.DictReader(handle))
    with RunStore(run_dir) as store:
        episodes = store.episodes(["integrator_failure", "fell", "length"])
        rewards = store.steps(["reward", "obs"])
    assert logged == int(episodes["integrator_failure"].sum()) == 10  # 2 envs x 100 steps / 20
    assert (episodes["length"] == 20).all() and not episodes["fell"].any()
    assert np.isfinite(rewards["reward"]).all() and np.isfinite(rewards["obs"]).all()  # no NaN reached the learner
