"""Shared fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest


@pytest.fixture
def actions() -> np.ndarray:
    """A fixed sequence of 200 random excitation vectors."""
    return np.random.default_rng(12345).uniform(0.0, 1.0, (200, 18))


# tests/mpi holds collective tests: they run under `mpiexec -n 1/2/3` (tests/test_mpi_tier.py launches them),
# not in the plain pytest process.
collect_ignore = [] if os.environ.get("LRUN_MPI_TIER") else ["mpi"]
