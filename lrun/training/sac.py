"""SAC in lrun's loop: the glue between the rollouts and the maths of `lrun.learn.sac` (transitions into the
replay buffer, with their mirror images where asked; the warm-up and the number of gradient steps), the buffer's
file beside the checkpoints (`lrun.store.replay`), the critics carried over from a parent, and the checks a SAC
run needs before it starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lrun import mpi as lmpi
from lrun.checkpoint import CheckpointError, checkpoint_dir, write_failure
from lrun.config import ConfigError, TrainConfig
from lrun.learn.blend import BlendedPolicy
from lrun.learn.policy import Policy
from lrun.learn.sac import SACSettings, SACUpdater
from lrun.learn.symmetry import asymmetry
from lrun.learn.transfer import mlp_shapes
from lrun.rollout import Rollout
from lrun.startup import Start
from lrun.store.replay import ReplayFile, ReplayFileError, load_replay, replay_path
from lrun.training.algorithm import Algorithm
from lrun.training.state import TrainingState


class SAC(Algorithm):
    """Soft actor-critic (`[sac]`): every learner keeps its simulators' transitions in a replay buffer (kept in
    `checkpoints/replay-LLL.h5` with `sac.save_buffer`) and takes `sac.updates_per_step` gradient steps per new
    decision, with gradients averaged over the learners."""

    name = "sac"
    scalars: ClassVar[dict[str, str]] = {
        "losses/entropy": "entropy",
        "charts/learning_rate": "learning_rate",
        "losses/updates": "updates",
        "losses/q_loss": "q_loss",
        "losses/actor_loss": "actor_loss",
        "losses/alpha": "alpha",
        "losses/q_mean": "q_mean",
        "losses/replay_transitions": "replay_transitions",
        "charts/policy_lag": "policy_lag",
    }
    sends_features = True  # the buffer keeps features before normalisation and normalises what it samples
    learns_value_head = False  # the actor's value head is unused: the twin critics are SAC's values

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.replay_file: ReplayFile | None = None  # with sac.save_buffer: the buffer's file
        self.restored_decisions = 0  # collected decisions the learners' buffers came back with, over all learners
        self.replay_note = ""  # how the buffer started, for rank 0's log
        self.simulators = 1  # simulator ranks in the world, and learners: how many decisions an iteration brings
        self.learners = 1

    def check_world(self, world_size: int) -> None:
        """sac.buffer_size holds at least one iteration of a learner's transitions (with their mirror images)."""
        config, layout = self.config, self.config.layout
        simulators = max(world_size - layout.learners, 1)
        per_learner = -(-simulators // layout.learners) * layout.envs_per_rank * layout.steps_per_env
        needed = per_learner * (2 if config.sac.mirror else 1)
        if config.sac.buffer_size < needed:
            raise ConfigError(
                f"sac.buffer_size = {config.sac.buffer_size}: a learner receives up to {needed} transitions per "
                f"iteration here ({per_learner} decisions{' and their mirror images' if config.sac.mirror else ''}); "
                f"the buffer must hold at least that many"
            )

    def check_resume(self, payload: dict, path: Path) -> None:
        """A resumed SAC run restores critics, targets, temperature and optimisers: refuse a checkpoint whose
        critics are not the config's `sac.hidden_sizes` (or that holds no SAC state at all) before anything is
        loaded."""
        state = payload.get("optimizer") or {}
        if "critic" not in state:
            raise CheckpointError(f"{path}: not a SAC run's checkpoint (no critics): start from it with run.init_from")
        q1 = {k: v for k, v in state["critic"].items() if k.startswith("q1.")}
        theirs = [out for out, _ in mlp_shapes(q1)[:-1]]  # the hidden layers' widths (the last layer gives Q)
        hidden = list(self.config.sac.hidden_sizes)
        if theirs != hidden:
            raise CheckpointError(
                f"{path}: checkpoint does not fit this config: sac.hidden_sizes {theirs} vs "
                f"{hidden} (the critics are restored with the run; --set sac.hidden_sizes={theirs})"
            )

    def build_updater(
        self, policy: Policy, reduce_gradients: Callable[[np.ndarray], None] | None, sample_seed: int
    ) -> SACUpdater:
        """Critics from the run seed, identical on every learner (they train one pair by averaged gradients);
        minibatches from the learner's own seed."""
        config = self.config
        return SACUpdater(
            policy,
            sac_settings(config),
            reduce_gradients,
            config.run.seed * 1000,
            config.sac.buffer_size,
            sample_seed=sample_seed,
        )

    def restored(self, state: TrainingState, payload: dict[str, Any]) -> None:
        """The checkpoint holds learner 0's generator: the others draw from their own, so their minibatch indices
        differ again after a resume (deterministically: from their seed and the iteration)."""
        if state.learner_index > 0:
            updater: SACUpdater = state.updater
            rng = np.random.default_rng([state.sample_seed, int(payload["iteration"])])
            updater.buffer.rng = updater.rng = rng

    def start_from(self, state: TrainingState, parent: dict[str, Any], new_inputs: np.ndarray) -> list[str]:
        """Start from a SAC parent's critics and temperature (copied, or widened into bigger critics), not from
        random critics that would hand the actor random gradients while they learn."""
        updater: SACUpdater = state.updater
        parent_optimizer = parent.get("optimizer") or {}
        if "critic" not in parent_optimizer:
            return ["critics learnt afresh (the parent is not a SAC run)"]
        try:
            how_critics = updater.start_from(parent_optimizer, new_inputs)
        except ValueError as exc:
            return [f"critics learnt afresh: the parent's do not fit ({exc})"]
        return [f"critics and temperature {how_critics} from the parent"]

    def attach(self, state: TrainingState, start: Start, layout: lmpi.RankLayout, waiter: lmpi.Waiter | None) -> None:
        """Note how many decisions an iteration brings, and (with `sac.save_buffer`) give the learner its buffer's
        file beside the run's checkpoints and, on --resume, refill the buffer from the file the resumed
        checkpoint's directory holds. The warm-up (`sac.learning_starts`) counts the collected decisions every
        learner got back, summed over the learners (collective over their communicator), so all of them start
        updating together."""
        config = self.config
        self.simulators = max(layout.world_size - layout.learners, 1)
        self.learners = layout.learners
        if not config.sac.save_buffer:
            return
        learner_comm = layout.learner_comm
        index = 0 if learner_comm is None else learner_comm.Get_rank()
        updater: SACUpdater = state.updater
        self.replay_file = ReplayFile(replay_path(checkpoint_dir(config.run.run_dir), index), updater.buffer)
        restored = None
        if start.resume_path is not None:
            source = replay_path(start.resume_path.parent, index)
            if not source.is_file():
                self.replay_note = (
                    f"replay buffer: no {source.name} beside the checkpoint: it refills "
                    f"({config.sac.learning_starts} decisions before the first update)"
                )
            else:
                try:
                    restored = load_replay(source, updater.buffer)
                except ReplayFileError as exc:
                    self.replay_note = f"replay buffer: {exc}; it refills"
        if restored is not None:
            if restored.exact and restored.path.resolve() == self.replay_file.path.resolve():
                self.replay_file.mark_synced()
            ahead = restored.iteration - state.iteration
            self.replay_note = (
                f"replay buffer: {restored.transitions} transitions back from {restored.path} (written at "
                f"iteration {restored.iteration}"
                + (f", {ahead} iterations after this checkpoint's: their transitions are kept" if ahead > 0 else "")
                + ")"
                + (f"; {restored.dropped} rows an interrupted write left were dropped" if restored.dropped else "")
            )
        # the warm-up goes on from what every learner got back (its buffer holds its share of the decisions)
        restored_decisions = np.array([float(restored.collected if restored is not None else 0)])
        if learner_comm is not None and learner_comm.Get_size() > 1:
            lmpi.allreduce_sum(learner_comm, restored_decisions, waiter or lmpi.Waiter(config.run.wait_sleep))
        self.restored_decisions = int(restored_decisions[0])

    def learn(
        self, state: TrainingState, rollouts: list[Rollout], collected_with: tuple[np.ndarray, np.ndarray]
    ) -> dict[str, float]:
        """Store the rollouts' transitions (and their mirror images, where asked) in the replay buffer, then take
        `sac.updates_per_step` gradient steps per new decision once `sac.learning_starts` decisions are in (of
        the critics alone for the next `sac.critic_warmup` decisions).

        Every learner takes the same number of steps (computed from the config and the layout, not from what it
        received), so their gradient Allreduces pair up."""
        config = self.config
        updater: SACUpdater = state.updater
        if config.policy.normalise_observations:  # the buffer is normalised with the statistics as they are now
            state.policy.set_input_statistics(state.normaliser.mean, state.normaliser.var)
        mirror = state.mirror(collected_with) if config.sac.mirror else None
        for k, r in enumerate(rollouts):  # the rollouts carry features before normalisation, as the buffer keeps them
            transitions = updater.stitcher.transitions(k, r.obs, r.actions, r.rewards, r.terminated, r.truncated)
            updater.buffer.add(*transitions)
            if mirror is not None:
                obs, actions, rewards, next_obs, terminated = transitions
                p, q = mirror.obs_perm, mirror.act_perm
                # the mirror image normalised as a state of its own (permuting normalised values would mix the
                # statistics of the left and right slots)
                here = torch.as_tensor(state.normalised(obs))
                there = torch.as_tensor(state.normalised(obs[:, p]))
                keep = asymmetry(here, there).numpy() >= config.sac.mirror_min_asymmetry
                updater.buffer.add(
                    obs[keep][:, p], actions[keep][:, q], rewards[keep], next_obs[keep][:, p], terminated[keep], False
                )
        per_iteration = config.layout.steps_per_env * config.layout.envs_per_rank
        # this session's decisions and those the learners' buffers came back with: a resumed run without its buffer
        # refills it before learning (the same count on every learner, so their gradient Allreduces pair up)
        collected = (
            per_iteration * self.simulators * (state.iteration + 1 - state.session_start) + self.restored_decisions
        )
        if collected < config.sac.learning_starts:
            losses = {"updates": 0.0, "replay_transitions": float(updater.buffer.size)}
        else:
            # u gradient steps per decision in all, shared by the learners (each the same count, so their
            # Allreduces pair up): L learners averaging minibatches of b keep the recipe's u b samples per decision
            n_updates = max(round(config.sac.updates_per_step * per_iteration * self.simulators / self.learners), 1)
            # the warm-up counts the run's decisions since it began, not this session's: a resumed run (with its
            # buffer or without) does not warm its critics up again
            run_decisions = per_iteration * self.simulators * (state.iteration + 1)
            actor = run_decisions >= config.sac.learning_starts + config.sac.critic_warmup
            losses = updater.update(n_updates, state.normalised, actor=actor, temperature=not holds_temperature(state))
            losses["replay_transitions"] = float(updater.buffer.size)
        losses["learning_rate"] = config.sac.learning_rate
        return losses

    def synced(self, state: TrainingState) -> np.ndarray:
        """The critics, their targets and the temperature."""
        updater: SACUpdater = state.updater
        return updater.sync_vector()

    def save(self, state: TrainingState) -> None:
        """Write the slots the learner's buffer filled since its file's last sync; a failure is an error that names
        the cure, and the checkpoint stays intact."""
        if self.replay_file is None:
            return
        try:
            self.replay_file.sync(state.iteration)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(
                f"{self.replay_file.path}: cannot write the replay buffer at iteration {state.iteration} "
                f"({write_failure(exc)}); the checkpoint is intact: free space (or move the file away) and "
                f"--resume, or set sac.save_buffer = false (a resumed run then refills its buffer)"
            ) from exc

    def overlaps_collection(self) -> bool:
        """`sac.overlap`."""
        return self.config.sac.overlap

    def mirrors(self) -> bool:
        """Mirrored transitions (`sac.mirror`)."""
        return self.config.sac.mirror

    def notes(self) -> list[str]:
        """How the replay buffer started."""
        return [self.replay_note] if self.replay_note else []


def holds_temperature(state: TrainingState) -> bool:
    """Whether this iteration's updates keep the temperature: a blend still ramping (c < 1) under
    `blend.temperature = "hold"`. At small c the blend's entropy is the frozen policy's, which no gradient can
    move; tuned towards the target entropy regardless, the temperature grew without bound (measured: 0.04 to
    0.67 in 25 iterations of the obstacles stage, the critics' values from 311 to -147, the runs falling)."""
    policy = state.policy
    return (
        state.config.blend.temperature == "hold"
        and isinstance(policy, BlendedPolicy)
        and float(policy.coefficient) < 1.0
    )


def sac_settings(config: TrainConfig) -> SACSettings:
    """The subset of the config the SAC update needs."""
    names = [f.name for f in fields(SACSettings)]
    return SACSettings(**{name: getattr(config.sac, name) for name in names})
