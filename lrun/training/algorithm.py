"""The one interface every training algorithm implements (`ppo.py`, `sac.py`; `loop.ALGORITHMS` names them).

As Stable-Baselines3 gives each algorithm its own `train()` over a shared collection loop, lrun's loop
(`lrun.training.loop`) collects rollouts, folds the observation statistics in, and hands the rollouts to the
algorithm; everything that differs between algorithms is behind these methods, each a no-op here where an
algorithm has nothing to do. One level deep: an algorithm subclasses this and nothing else.

An algorithm object is made afresh on every rank for every run (`ALGORITHMS[config.run.algorithm](config)`), so
it may hold that run's per-learner state (SAC: its replay buffer's file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lrun import mpi as lmpi
from lrun.config import TrainConfig
from lrun.learn.policy import Policy
from lrun.rollout import Rollout
from lrun.startup import Start
from lrun.training.state import TrainingState, Updater


class Algorithm:
    """A learner's algorithm: its updater, what it checks, restores, carries over, learns and logs."""

    #: the `run.algorithm` value that selects it
    name: ClassVar[str] = ""
    #: progress.csv column -> key of the losses `learn` returns, in the order they are logged; nothing else of
    #: the losses is logged (so a PPO run has no SAC column and a SAC run no PPO column)
    scalars: ClassVar[dict[str, str]] = {}
    #: simulators send the observation features before normalisation (what a replay buffer keeps, normalised
    #: when sampled) instead of the normalised observations the policy saw
    sends_features: ClassVar[bool] = False
    #: the policy's value head is learnt; cloning from or into a policy whose head is unused does not learn it
    learns_value_head: ClassVar[bool] = True

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def check_world(self, world_size: int) -> None:
        """Refuse (ConfigError) a layout the algorithm cannot train on a world of this size; before any MPI."""

    def check_resume(self, payload: dict, path: Path) -> None:
        """Refuse (CheckpointError) a checkpoint to resume that lacks what the algorithm restores."""

    def build_updater(
        self, policy: Policy, reduce_gradients: Callable[[np.ndarray], None] | None, sample_seed: int
    ) -> Updater:
        """The maths object that updates `policy` (`reduce_gradients` averages a flat gradient over the
        learners; `sample_seed` draws this learner's minibatches)."""
        raise NotImplementedError

    def restored(self, state: TrainingState, payload: dict[str, Any]) -> None:
        """After `state.restore(payload)`: what the algorithm restores beyond the common state."""

    def start_from(self, state: TrainingState, parent: dict[str, Any], new_inputs: np.ndarray) -> list[str]:
        """A new run from a trained parent: carry over what the algorithm owns (after `state.start_from`);
        returns what it did, in words, for rank 0's log."""
        return []

    def attach(self, state: TrainingState, start: Start, layout: lmpi.RankLayout, waiter: lmpi.Waiter | None) -> None:
        """Attach to a learner's state, once it is new, resumed or started from a parent (collective over the
        learners' communicator where the algorithm needs one)."""

    def learn(
        self, state: TrainingState, rollouts: list[Rollout], collected_with: tuple[np.ndarray, np.ndarray]
    ) -> dict[str, float]:
        """Learn from this iteration's rollouts (the normaliser already holds their statistics;
        `collected_with` are the (mean, std) they were normalised with). Returns the losses named in `scalars`
        (and `auxiliary_loss` where a blend distils its frozen policy)."""
        raise NotImplementedError

    def synced(self, state: TrainingState) -> np.ndarray:
        """What every learner must hold identically besides the policy's parameters (float64; may be empty)."""
        return np.zeros(0)

    def save(self, state: TrainingState) -> None:
        """What the algorithm keeps beside a checkpoint, on every learner: after each checkpoint and at a stop
        signal (global rank 0 writes the checkpoint itself)."""

    def overlaps_collection(self) -> bool:
        """Whether the simulators may collect the next iteration while this learner updates (an off-policy
        learner can take transitions from a policy one update behind; an on-policy one cannot)."""
        return False

    def mirrors(self) -> bool:
        """Whether the run learns from left/right mirror images."""
        return False

    def notes(self) -> list[str]:
        """Lines for rank 0's start-up log (how the algorithm's own state started)."""
        return []
