"""Give every MPI rank its own pytest temporary directory (they would race on one otherwise)."""

from __future__ import annotations

import os

import pytest
from mpi4py import MPI


def pytest_configure(config):
    base = os.environ.get("LRUN_MPI_BASETEMP")
    if base:
        config.option.basetemp = os.path.join(base, f"rank{MPI.COMM_WORLD.Get_rank()}")


@pytest.fixture
def shared_dir(tmp_path):
    """A directory every rank agrees on (rank 0's tmp_path)."""
    return MPI.COMM_WORLD.bcast(str(tmp_path), root=0)
