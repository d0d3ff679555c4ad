"""Run the collective tests in tests/mpi under real `mpiexec -n 1`, `-n 2` and `-n 3` (pip MPICH)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lrun.launcher import find_mpiexec

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = find_mpiexec()


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")
@pytest.mark.timeout(400)
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_collective_tier(ranks, tmp_path):
    env = dict(os.environ, LRUN_MPI_TIER="1", LRUN_MPI_BASETEMP=str(tmp_path))
    command = [
        MPIEXEC,
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--timeout=120",
        str(ROOT / "tests" / "mpi"),
    ]
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mpiexec -n {ranks} hung (a collective never completed):\n{exc.stdout}\n{exc.stderr}")
    assert result.returncode == 0, f"mpiexec -n {ranks} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.count("passed") == ranks  # every rank ran and passed its tests
