"""lrun: train muscle-driven running agents (NIPS 2017 Learning to Run) with PPO or SAC over MPI.

From Python: `lrun.load(path)` gives an `Agent` that acts on the env's observations and builds its env
(`lrun.api`). The names load lazily, so importing a maths module of lrun does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lrun.api import Agent, load

__all__ = ["Agent", "__version__", "load"]


def __getattr__(name: str):
    if name in ("Agent", "load"):
        from lrun import api

        return getattr(api, name)
    raise AttributeError(f"module 'lrun' has no attribute {name!r}")
