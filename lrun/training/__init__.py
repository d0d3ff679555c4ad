"""`lrun train`: the training loop for every rank role, and the algorithms it runs.

- `loop.py`: `train()` (every rank's entry point), the learner's loop, and `ALGORITHMS`, the registry;
- `engine.py`: the rollout transport, both sides of every message (`LocalRollouts` in serial mode,
  `RemoteRollouts` on a learner, `run_simulator` on a simulator), the stop protocol and each rank's context;
- `state.py`: `TrainingState`, what a learner owns and a checkpoint holds (given its updater, never choosing it);
- `algorithm.py`: the interface every algorithm implements; `ppo.py` and `sac.py`: the two that do, each the
  whole of its glue (its updater, what it keeps beside a checkpoint, how it learns from rollouts, what it logs);
- `report.py`: global rank 0's side: the run directory, the per-iteration scalars, checkpoints.

Adding an algorithm takes one module here, one line in `loop.ALGORITHMS` and one config section; the loop and
the transport know no algorithm by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrun.training.loop import train

__all__ = ["train"]


def __getattr__(name: str):
    # loaded on first use: importing one module of the package (the engine's message size, say) does not bring
    # the whole loop with it, and no module of the package depends on its __init__
    if name == "train":
        from lrun.training.loop import train

        return train
    raise AttributeError(f"module 'lrun.training' has no attribute {name!r}")
