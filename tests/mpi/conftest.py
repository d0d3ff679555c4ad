"""Give every MPI rank its own pytest temporary directory (they would race on one otherwise)."""

from __future__ import annotations

import os

from mpi4py import MPI


def pytest_configure(config):
    base = os.environ.get("LRUN_MPI_BASETEMP")
    if base:
        config.option.basetemp = os.path.join(base, f"rank{MPI.COMM_WORLD.Get_rank()}")
