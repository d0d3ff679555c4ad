"""Shared fixtures."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def actions() -> np.ndarray:
    """A fixed sequence of 200 random excitation vectors."""
    return np.random.default_rng(12345).uniform(0.0, 1.0, (200, 18))
