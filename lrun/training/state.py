"""`TrainingState`: what a learner owns and a checkpoint holds (the policy, the normaliser, the algorithm's updater,
the counters). It is given its updater (`lrun.training.algorithm.Algorithm.build_updater`), so it knows no
algorithm by name: what differs between algorithms lives in their own modules."""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np
import torch

from lrun import __version__
from lrun.config import TrainConfig
from lrun.env.features import action_mirror, observation_mirror
from lrun.learn.normaliser import RunningNormaliser
from lrun.learn.policy import ActorCritic, Policy
from lrun.learn.symmetry import Mirror
from lrun.learn.transfer import zero_input_columns
from lrun.startup import Problem


class Updater(Protocol):
    """What the state needs of an algorithm's updater: its state for the checkpoint and its minibatch generator
    (checkpointed with the run)."""

    rng: np.random.Generator

    def state_dict(self) -> dict:
        """Everything the updater checkpoints (optimisers; for SAC also critics and temperature)."""

    def load_state_dict(self, state: dict) -> None:
        """Inverse of `state_dict`."""


def sample_seed(config: TrainConfig, learner_index: int) -> int:
    """The seed of a learner's own minibatch draws."""
    return config.run.seed * 1000 + learner_index


class TrainingState:
    """What a learner owns and a checkpoint holds."""

    def __init__(
        self, config: TrainConfig, problem: Problem, policy: Policy, updater: Updater, learner_index: int
    ) -> None:
        self.config = config
        self.problem = problem
        self.policy = policy
        self.learner_index = learner_index
        self.normaliser = RunningNormaliser(problem.obs_size)
        self.sample_seed = sample_seed(config, learner_index)
        self.updater: Any = updater  # the algorithm's own (PPOUpdater, SACUpdater): its module knows which
        self.iteration = 0
        self.env_steps = 0  # simulated env steps (0.01 s each in RunEnv): budgets are counted in these
        self.decisions = 0  # agent steps: env_steps / frame_skip
        self.lineage: list[dict[str, Any]] = []  # the checkpoints this run descends from (curriculum stages)
        self.metadata: dict[str, Any] = {}  # versions, git commit, hosts, Slurm job (lrun.metadata)
        self.session_start = 0  # the iteration this process started (or resumed) at
        self.transfer_note = ""  # what a transfer from a parent carried over, for rank 0's log
        # an overlapped run (`Algorithm.overlaps_collection`): the parameters its simulators act with in the next
        # iteration, one update behind the policy's; checkpointed so that a resume hands them out again
        self.acting: np.ndarray | None = None
        self.next_acting: np.ndarray | None = None

    def payload(self) -> dict[str, Any]:
        """Checkpoint contents (tensors and plain data only: loadable with weights_only=True)."""
        p = self.config.policy
        return {
            "meta": {
                "obs_size": self.problem.obs_size,
                "act_size": self.problem.act_size,
                "hidden_sizes": list(p.hidden_sizes),
                "distribution": p.distribution,
                "policy_spec": self.policy.spec(),
                "lrun_version": __version__,
            },
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "decisions": self.decisions,
            "policy": self.policy.state_dict(),
            "optimizer": self.updater.state_dict(),
            "normaliser": torch.from_numpy(self.normaliser.state_vector()),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(self.updater.rng.bit_generator.state),
            "config": self.config.to_dict(),
            "lineage": self.lineage,
            "metadata": self.metadata,
            **({"acting_policy": torch.from_numpy(self.next_acting)} if self.next_acting is not None else {}),
        }

    def restore(self, payload: dict[str, Any]) -> None:
        """Load a checkpoint payload (already checked for fit); the algorithm then adds its own
        (`Algorithm.restored`)."""
        self.policy.load_state_dict(payload["policy"])
        self.updater.load_state_dict(payload["optimizer"])
        self.normaliser.load_state_vector(payload["normaliser"].numpy())
        torch.set_rng_state(payload["torch_rng"])
        self.updater.rng.bit_generator.state = json.loads(payload["numpy_rng"])
        self.iteration = int(payload["iteration"])
        self.env_steps = int(payload["env_steps"])
        self.decisions = int(payload.get("decisions", self.env_steps))
        self.lineage = list(payload.get("lineage", []))
        if "acting_policy" in payload:  # the loop hands it out only where it fits an overlapped run
            self.acting = payload["acting_policy"].numpy()

    def start_from(self, parent: dict[str, Any], how: str) -> tuple[np.ndarray, list[str]]:
        """Begin a new run from a trained policy's normaliser (its weights are in the policy already, or are
        imitated next) and record it in the lineage; fresh counters (the algorithm carries over what it owns:
        `Algorithm.start_from`).

        Features the parent never saw vary (obstacles and muscle strengths, for a walker from flat ground) start
        their statistics afresh, and a network carried over as it is gets zero weight from them, so it acts as
        the parent did until it learns to use them (`lrun.learn.transfer`). Returns those new inputs (a mask over
        the features) and what was carried over, in words."""
        self.normaliser.load_state_vector(parent["normaliser"].numpy())
        new_inputs = self.normaliser.forget_constant()
        notes = []
        if new_inputs.any():
            notes.append(f"{int(new_inputs.sum())} features the parent never saw vary start their statistics afresh")
        if how in ("init", "clone") and isinstance(self.policy, ActorCritic):  # a clone acts alone from the start
            zero_input_columns(self.policy.actor, new_inputs)
            zero_input_columns(self.policy.critic, new_inputs)
        self.lineage = [
            *parent.get("lineage", []),
            {
                "checkpoint": parent["path"],
                "iteration": parent["iteration"],
                "run_dir": parent["config"]["run"]["run_dir"],
                "how": how,
            },
        ]
        return new_inputs, notes

    def normalised(self, features: np.ndarray) -> np.ndarray:
        """Features as the networks take them: normalised with the run's current statistics (unclipped: the
        networks clip their own inputs)."""
        if not self.config.policy.normalise_observations:
            return features.astype(np.float32)
        return self.normaliser.normalise(features, clip=False)

    def mirror(self, statistics: tuple[np.ndarray, np.ndarray], min_asymmetry: float = 0.0) -> Mirror:
        """The left/right mirror of this run's features, for observations normalised with these statistics
        (mean, std; identity statistics when observations are not normalised)."""
        mean, std = statistics
        if not self.config.policy.normalise_observations:
            mean, std = np.zeros_like(mean), np.ones_like(std)
        perm = observation_mirror(self.problem.feature_map)
        return Mirror(perm, action_mirror(self.problem.act_size), mean, std, min_asymmetry)
