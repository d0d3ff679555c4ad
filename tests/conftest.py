"""Shared fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

# One intra-op thread in the test process, as every lrun rank runs: with 2 threads on a 2-core machine whose other
# core is busy (a subprocess under test, a parallel job), a small SAC update took 70 ms instead of 7 (measured).
torch.set_num_threads(1)


@pytest.fixture
def actions() -> np.ndarray:
    """A fixed sequence of 200 random excitation vectors."""
    return np.random.default_rng(12345).uniform(0.0, 1.0, (200, 18))


# tests/mpi holds collective tests: they run under `mpiexec -n 1/2/3` (tests/test_mpi_tier.py launches them),
# not in the plain pytest process.
collect_ignore = [] if os.environ.get("LRUN_MPI_TIER") else ["mpi"]
