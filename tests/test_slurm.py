"""The Slurm job scripts on a real one-node Slurm cluster (slurm-wlm + munge, started by these tests)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from slurm_cluster import SlurmCluster, unavailable

from lrun.checkpoint import load_checkpoint
from lrun.store.reader import RunStore

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STAGES = ROOT / "experiments" / "stages"


def tiny(iterations: int, steps: int = 30, extra: str = "") -> str:
    return (
        f'["run.iterations={iterations}", "ppo.steps_per_env={steps}", "layout.envs_per_rank=2", '
        f'"ppo.minibatches=4", "ppo.epochs=1", "policy.hidden_sizes=[32, 32]", "run.checkpoint_every=100"'
        f"{extra}]"
    )


def curriculum_file(tmp_path: Path, stages: list[tuple[str, str, str | None, str]]) -> Path:
    text = ""
    for name, config, parent, overrides in stages:
        text += f'[[stage]]\nname = "{name}"\nconfig = "{STAGES / config}"\nset = {overrides}\n'
        text += f'parent = "{parent}"\n' if parent else ""
    path = tmp_path / "curriculum.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    c.env["PATH"] = f"{BIN}:{c.env['PATH']}"  # sbatch passes the submitting environment to the jobs
    c.start()
    yield c
    c.stop()


def submit(cluster: SlurmCluster, curriculum: Path, root: Path, *extra: str, env: dict | None = None) -> dict:
    result = cluster.run(
        [str(ROOT / "slurm" / "submit-curriculum.sh"), str(curriculum), str(root), *extra], env=env or {}
    )
    return dict(line.split() for line in result.stdout.strip().splitlines())


def output_of(root: Path, job_id: str) -> str:
    return "".join(p.read_text() for p in root.glob(f"slurm-*-{job_id}.out"))


@pytest.mark.timeout(600)
def test_two_stage_chain_completes_and_stage_2_starts_from_stage_1(cluster, tmp_path):
    curriculum = curriculum_file(tmp_path, [("walk", "walk.toml", None, tiny(2)), ("run", "run.toml", "walk", tiny(2))])
    root = tmp_path / "runs"
    jobs = submit(cluster, curriculum, root)
    assert list(jobs) == ["walk", "run"]
    assert cluster.job(jobs["run"])["Dependency"].startswith(f"afterok:{jobs['walk']}")
    for stage in ("walk", "run"):
        fields = cluster.wait_for(jobs[stage], {"COMPLETED", "FAILED", "CANCELLED"})
        assert fields["JobState"] == "COMPLETED", output_of(root, jobs[stage])
    walk_checkpoint = root / "walk" / "checkpoints" / "checkpoint.pt"
    assert load_checkpoint(root / "run")["lineage"][0]["checkpoint"] == str(walk_checkpoint)
    log = output_of(root, jobs["run"])
    assert "1 learner + 2 simulator ranks" in log and f"starting from {walk_checkpoint}" in log


@pytest.mark.timeout(600)
def test_usr1_checkpoints_requeues_and_completes_without_lost_or_repeated_steps(cluster, tmp_path):
    curriculum = curriculum_file(tmp_path, [("walk", "walk.toml", None, tiny(25, steps=40))])
    root = tmp_path / "runs"
    job = submit(cluster, curriculum, root)["walk"]
    deadline = time.time() + 180
    while "iter 3/25" not in output_of(root, job):
        assert time.time() < deadline, output_of(root, job)
        time.sleep(0.3)
    cluster.run(["scancel", "-b", "-s", "USR1", job])
    fields = cluster.wait_for(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=400)
    log = output_of(root, job)
    assert fields["JobState"] == "COMPLETED", log
    assert int(fields["Restarts"]) >= 1
    assert "USR1 received, forwarding to lrun" in log and "requeueing job" in log
    assert "resuming at iteration" in log
    with RunStore(root / "walk") as store:
        versions = store.steps(["policy_version"])["policy_version"]
        ids = store.episodes(["id"])["id"]
    assert np.array_equal(np.bincount(versions), [2 * 2 * 40] * 25)  # every iteration once, none twice
    assert len(np.unique(ids)) == len(ids)
    assert load_checkpoint(root / "walk")["iteration"] == 25


@pytest.mark.timeout(300)
def test_a_failing_stage_stops_the_chain(cluster, tmp_path):
    curriculum = curriculum_file(
        tmp_path,
        [
            ("walk", "walk.toml", None, tiny(2, extra=', "layout.envs_per_rank=0"')),
            ("run", "run.toml", "walk", tiny(2)),
        ],
    )
    root = tmp_path / "runs"
    jobs = submit(cluster, curriculum, root)
    assert cluster.wait_for(jobs["walk"], {"COMPLETED", "FAILED", "CANCELLED"})["JobState"] == "FAILED"
    assert "zero envs" in output_of(root, jobs["walk"])
    fields = cluster.wait_for(jobs["run"], {"COMPLETED", "FAILED", "CANCELLED"})
    assert fields["JobState"] == "CANCELLED" and "Dependency" in fields.get("Reason", "")
    assert not (root / "run").exists()  # stage 2 never ran


@pytest.mark.timeout(300)
def test_wrong_number_of_ranks_fails_loudly(cluster, tmp_path):
    curriculum = curriculum_file(tmp_path, [("walk", "walk.toml", None, tiny(2))])
    root = tmp_path / "runs"
    job = submit(cluster, curriculum, root, env={"LRUN_LAUNCH": "srun"})["walk"]  # plain srun: 3 worlds of size 1
    fields = cluster.wait_for(job, {"COMPLETED", "FAILED", "CANCELLED"})
    log = output_of(root, job)
    assert fields["JobState"] == "FAILED", log
    assert "srun started 3 tasks but this one sees an MPI world of size 1" in log
    assert os.path.exists(root)


@pytest.mark.timeout(300)
def test_seeds_as_a_job_array(cluster, tmp_path):
    curriculum = curriculum_file(tmp_path, [("walk", "walk.toml", None, tiny(1))])
    root = tmp_path / "runs"
    job = submit(cluster, curriculum, root, "--seeds", "2")["walk"]
    deadline = time.time() + 240
    while True:  # an array job: wait until no task is pending or running
        states = cluster.run(["squeue", "-h", "-j", job, "-t", "PD,R,CG", "-o", "%T"], check=False).stdout.split()
        if not states:
            break
        assert time.time() < deadline, states
        time.sleep(0.5)
    for seed in (0, 1):
        checkpoint = load_checkpoint(root / f"seed-{seed}" / "walk")
        assert checkpoint["iteration"] == 1 and checkpoint["config"]["run"]["seed"] == seed
    assert len(list(root.glob(f"slurm-lrun-walk-{job}_*.out"))) == 2
