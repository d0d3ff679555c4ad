"""Collecting rollouts with the current policy, and packing them into one flat float32 buffer (no MPI).

A simulator rank holds a `RolloutCollector`; what it collects crosses to the learner as one float32 vector
(`Rollout.pack` / `Rollout.unpack`), with a small header and the finished episodes' statistics at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from lrun.env.factory import reward_terms_of
from lrun.env.features import IDENTITY, FeatureStream, feature_size
from lrun.env.vector import SerialVectorEnv
from lrun.learn.normaliser import RunningNormaliser
from lrun.learn.policy import Policy
from lrun.store.recorder import EpisodeBook

#: Per-episode statistics a rollout carries (columns of `Rollout.episodes`); the store's own episode table is
#: richer (`lrun.store.schema.EPISODE_FIELDS`).
EPISODE_COLUMNS = ("return", "length", "distance", "task_return", "integrator_failure", "sim_steps", "fell")


@dataclass
class Rollout:
    """One simulator's data for one iteration, and the one owner of its layout: which per-step arrays there are
    (`STEP_ARRAYS`, shape (steps, envs, ...)), how they travel as one float32 vector (`pack` / `unpack`, header
    first, finished episodes and reward-term sums last) and what logging keeps of it (`summary`)."""

    #: name -> per-step width: "obs" and "act" are the observation and action sizes, 0 a scalar per env
    STEP_ARRAYS: ClassVar[dict[str, str | int]] = {
        "obs": "obs",  # normalised observations the policy saw (features, unclipped)
        "actions": "act",  # raw policy samples
        "logprobs": 0,
        "rewards": 0,
        "terminated": 0,
        "truncated": 0,
        "values": 0,
        "final_values": 0,  # V(final observation) where truncated, else 0
    }
    HEADER: ClassVar[tuple[str, ...]] = ("policy_version", "n_episodes", "simulate_s", "wait_s", "store_s", "sim_steps")

    obs: np.ndarray
    actions: np.ndarray
    logprobs: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    values: np.ndarray
    final_values: np.ndarray
    next_value: np.ndarray  # (envs,) V after the last step
    episodes: np.ndarray = field(default_factory=lambda: np.zeros((0, len(EPISODE_COLUMNS))))
    policy_version: int = 0
    simulate_s: float = 0.0
    wait_s: float = 0.0
    store_s: float = 0.0
    term_sums: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per named reward term, summed over steps
    sim_steps: int = -1  # env steps simulated (decisions x frame skip, less where episodes ended mid-skip)

    @property
    def n_steps(self) -> int:
        """Agent steps (decisions) in this rollout."""
        return int(self.rewards.size)

    @property
    def n_sim_steps(self) -> int:
        """Simulated env steps (0.01 s each in RunEnv) in this rollout: the budget's unit."""
        return self.sim_steps if self.sim_steps >= 0 else self.n_steps

    def episode_column(self, name: str) -> np.ndarray:
        """One statistic of every finished episode (a name in EPISODE_COLUMNS)."""
        return self.episodes[:, EPISODE_COLUMNS.index(name)]

    @classmethod
    def step_shapes(cls, steps: int, envs: int, obs_size: int, act_size: int) -> dict[str, tuple[int, ...]]:
        """The shape of every per-step array."""
        widths = {"obs": obs_size, "act": act_size}
        return {
            name: (steps, envs, widths[width]) if isinstance(width, str) else (steps, envs)
            for name, width in cls.STEP_ARRAYS.items()
        }

    @classmethod
    def size(cls, steps: int, envs: int, obs_size: int, act_size: int, n_episodes: int, n_terms: int = 0) -> int:
        """Length of the packed vector."""
        per_step = sum(int(np.prod(shape)) for shape in cls.step_shapes(steps, envs, obs_size, act_size).values())
        return len(cls.HEADER) + per_step + envs + n_episodes * len(EPISODE_COLUMNS) + n_terms

    def pack(self) -> np.ndarray:
        """The rollout as one float32 vector: header, per-step arrays, next values, episodes, term sums."""
        header = [self.policy_version, len(self.episodes), self.simulate_s, self.wait_s, self.store_s]
        parts = [np.array([*header, self.n_sim_steps])]
        parts += [getattr(self, name) for name in self.STEP_ARRAYS]
        parts += [self.next_value, self.episodes, self.term_sums]
        return np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1) for p in parts])

    @classmethod
    def unpack(
        cls, buffer: np.ndarray, steps: int, envs: int, obs_size: int, act_size: int, n_terms: int = 0
    ) -> Rollout:
        """Inverse of `pack`; ValueError if the vector's size does not fit the shapes."""
        n_episodes = int(buffer[1]) if len(buffer) >= len(cls.HEADER) else -1
        expected = cls.size(steps, envs, obs_size, act_size, max(n_episodes, 0), n_terms)
        if n_episodes < 0 or len(buffer) != expected:
            raise ValueError(
                f"rollout buffer of {len(buffer)} values does not match {steps} steps x {envs} envs "
                f"x obs {obs_size} / act {act_size} with {n_episodes} episodes ({expected} expected)"
            )
        offset = len(cls.HEADER)

        def take(*shape: int) -> np.ndarray:
            nonlocal offset
            n = int(np.prod(shape))
            out = buffer[offset : offset + n].reshape(shape)
            offset += n
            return out

        arrays = {name: take(*shape) for name, shape in cls.step_shapes(steps, envs, obs_size, act_size).items()}
        arrays["terminated"] = arrays["terminated"].astype(bool)
        arrays["truncated"] = arrays["truncated"].astype(bool)
        header = dict(zip(cls.HEADER, buffer[: len(cls.HEADER)].tolist(), strict=True))
        return cls(
            **arrays,
            next_value=take(envs),
            episodes=take(n_episodes, len(EPISODE_COLUMNS)),
            term_sums=take(n_terms),
            policy_version=int(header["policy_version"]),
            simulate_s=header["simulate_s"],
            wait_s=header["wait_s"],
            store_s=header["store_s"],
            sim_steps=int(header["sim_steps"]),
        )

    def summary(self) -> Rollout:
        """What logging needs (episodes, timings, counts, term sums), without the per-step arrays: cheap to
        gather from other learners."""
        empty = {name: np.zeros((0,), np.float32) for name in self.STEP_ARRAYS}
        empty["rewards"] = np.zeros(self.n_steps, np.float32)  # keeps n_steps
        return replace(self, **empty, next_value=np.zeros((0,), np.float32))


class RolloutCollector:
    """Steps a `SerialVectorEnv` with a local copy of the policy; raw observations feed the normaliser sums.

    With an `EpisodeBook`, every step is also recorded for the trajectory store (`last_record`).
    """

    def __init__(
        self,
        vec: SerialVectorEnv,
        policy: Policy,
        normaliser: RunningNormaliser,
        normalise_observations: bool = True,
        distance_index: int | None = None,
        book: EpisodeBook | None = None,
        feature_map: str = IDENTITY,
        send_features: bool = False,
    ) -> None:
        """`distance_index`: observation entry that measures distance travelled (pelvis x in RunEnv), if any;
        `feature_map`: what the policy sees of the env's observations (`lrun.env.features`); `send_features`:
        rollouts carry the features before normalisation (SAC's replay buffer keeps those) instead of the
        policy's normalised inputs (PPO learns from those)."""
        self.vec = vec
        self.send_features = send_features
        self.feature_map = feature_map
        self.distance_index = distance_index
        self.policy = policy
        self.normaliser = normaliser
        self.normalise_observations = normalise_observations
        self.book = book
        self.reward_terms = reward_terms_of(vec.envs[0])
        space = vec.single_action_space
        self.low = np.asarray(space.low, dtype=np.float64)
        self.high = np.asarray(space.high, dtype=np.float64)
        self.raw_obs, infos = vec.reset()
        self.stream = FeatureStream(feature_map, len(self.raw_obs))  # what a map with memory remembers, per env
        if book is not None:
            for i, info in enumerate(infos):
                book.start(i, info)
        self.policy_version = 0
        self.last_record: dict[str, np.ndarray] | None = None
        self.last_terms: dict[str, np.ndarray] | None = None

    def _input(self, raw: np.ndarray, rows: list[int] | None = None) -> np.ndarray:
        return self._normalised(self.stream(raw, rows))

    def _normalised(self, x: np.ndarray) -> np.ndarray:
        if self.normalise_observations:
            return self.normaliser.normalise(x, clip=False)  # the policy clips (after a blend's mapping)
        return x.astype(np.float32)

    def collect(self, steps: int) -> tuple[Rollout, np.ndarray]:
        """`steps` steps of every env. Returns the rollout and the moments [sum, sumsq, count] of raw obs."""
        start = time.perf_counter()
        if self.normalise_observations:  # a blend maps them onto its frozen policy's own statistics
            self.policy.set_input_statistics(self.normaliser.mean, self.normaliser.var)
        envs, obs_size = self.raw_obs.shape
        act_size = self.low.shape[0]
        shapes = Rollout.step_shapes(steps, envs, feature_size(self.feature_map, obs_size), act_size)
        arrays = {
            name: np.zeros(shape, bool if name in ("terminated", "truncated") else np.float32)
            for name, shape in shapes.items()
        }
        obs, actions, logprobs, rewards = arrays["obs"], arrays["actions"], arrays["logprobs"], arrays["rewards"]
        terminated, truncated, values = arrays["terminated"], arrays["truncated"], arrays["values"]
        final_values = arrays["final_values"]
        raw_obs = np.zeros((steps, envs, obs_size), np.float32)
        seen = np.zeros((steps, envs, shapes["obs"][-1]))  # the features, before normalisation
        applied = np.zeros((steps, envs, act_size), np.float32)
        episode_ids = np.zeros((steps, envs), np.int64)
        steps_in_episode = np.zeros((steps, envs), np.int32)
        terms = {name: np.zeros((steps, envs), np.float32) for name in self.reward_terms}
        episodes = []
        sim_steps = 0
        book = self.book
        for t in range(steps):
            seen[t] = self.stream(self.raw_obs)
            x = self._normalised(seen[t])
            raw_action, logprob, value = self.policy.act(x)
            # float32 excitations, so the stored float32 copy is exactly what the env applied (replay is exact)
            env_action = self.policy.env_action(raw_action, self.low, self.high).astype(np.float32)
            next_raw, reward, term, trunc, infos = self.vec.step(env_action)
            obs[t] = seen[t] if self.send_features else x
            raw_obs[t], actions[t], applied[t] = self.raw_obs, raw_action, env_action
            logprobs[t], values[t] = logprob, value
            rewards[t], terminated[t], truncated[t] = reward, term, trunc
            sim_steps += sum(int(info.get("frames", 1)) for info in infos)
            for name in self.reward_terms:
                terms[name][t] = [info.get(name, np.nan) for info in infos]
            rows = None
            if book is not None:
                episode_ids[t], steps_in_episode[t], rows = book.step_rows()
            for i in np.flatnonzero(term | trunc):
                info = infos[i]
                if trunc[i] and not term[i]:
                    final_values[t, i] = self.policy.values(self._input(info["final_observation"][None], [int(i)]))[0]
                self.stream.reset([int(i)])  # the env has reset: its next observation begins a new episode
                final = info["final_observation"]
                distance = float("nan") if self.distance_index is None else float(final[self.distance_index])
                episode = info["episode"]
                failure = float(bool(info.get("integrator_failure", False)))
                episodes.append(
                    (
                        episode["return"],
                        episode["length"],
                        distance,
                        episode["task_return"],
                        failure,
                        episode.get("sim_steps", episode["length"]),
                        float(bool(term[i]) and not failure),  # ended by the env's own end (a fall in RunEnv)
                    )
                )
                if book is not None:
                    book.finish(int(i), info, bool(term[i]), final, int(rows[i]), self.policy_version)
                    book.start(int(i), info["reset_info"])
            self.raw_obs = next_raw
        next_value = self.policy.values(self._input(self.raw_obs))
        moments = RunningNormaliser.moments(seen)
        if book is not None:
            n = steps * envs
            self.last_record = {
                "obs": raw_obs.reshape(n, obs_size),
                "excitations": applied.reshape(n, act_size),
                "reward": rewards.reshape(n),
                "terminated": terminated.reshape(n),
                "truncated": truncated.reshape(n),
                "value": values.reshape(n),
                "logprob": logprobs.reshape(n),
                "env_index": np.tile(np.arange(envs, dtype=np.int16), steps),
                "episode_id": episode_ids.reshape(n),
                "step_in_episode": steps_in_episode.reshape(n),
                "policy_version": np.full(n, self.policy_version, np.int32),
            }
            self.last_terms = {name: values_.reshape(n) for name, values_ in terms.items()}
        rollout = Rollout(
            **arrays,
            next_value=next_value,
            episodes=np.array(episodes, dtype=np.float64).reshape(-1, len(EPISODE_COLUMNS)),
            policy_version=self.policy_version,
            simulate_s=time.perf_counter() - start,
            term_sums=np.array([float(np.nansum(terms[name])) for name in self.reward_terms]),
            sim_steps=sim_steps,
        )
        return rollout, moments
