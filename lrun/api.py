"""lrun from Python: a trained policy that acts on the env's own observations, and the env it was trained on.

```python
import lrun

agent = lrun.load("models/walk")          # a run directory, a checkpoint file or a shipped model's directory
env = agent.make_env()                    # the env it was trained on (or agent.make_env("round2"))
obs, info = env.reset(seed=0)
while True:
    obs, reward, terminated, truncated, info = env.step(agent.act(obs))
    if terminated or truncated:
        break
```

`Agent.act` takes what the env returns (RunEnv's 41 values, or a batch of them) and returns what the env takes
(the 18 excitations in [0, 1]): the checkpoint's feature map, observation normaliser and action mapping are
applied inside, exactly as `lrun eval` and the training collectors apply them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from lrun.checkpoint import LATEST, CheckpointError, load_checkpoint, resolve_checkpoint
from lrun.config import TrainConfig, config_from_dict
from lrun.env import ENV_ID
from lrun.env.features import ACT_SIZE, TASK_SIZE, FeatureStream
from lrun.learn.blend import build_from_spec
from lrun.learn.normaliser import RunningNormaliser
from lrun.learn.policy import Policy

#: Where the shipped models live (the repository's models/ directory, beside the package).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

#: Env keyword arguments that served training only: the starting push (lrun eval starts at rest), bigger
#: obstacles than the task's, and fault injection. `Agent.make_env` leaves them out.
TRAINING_ONLY_KWARGS = ("init_speed", "obstacle_radius_scale", "fault_every")


def load_policy(checkpoint: str | Path) -> tuple[Policy, RunningNormaliser, dict[str, Any]]:
    """The checkpoint's policy (any architecture, blends included), its observation normaliser and the whole
    checkpoint payload."""
    payload = load_checkpoint(checkpoint)
    spec = payload["meta"].get("policy_spec")
    if spec is None:
        raise CheckpointError(f"{checkpoint}: checkpoint records no policy architecture (written by an older lrun)")
    policy = build_from_spec(spec)
    policy.load_state_dict(payload["policy"])
    policy.eval()
    normaliser = RunningNormaliser(payload["meta"]["obs_size"])
    normaliser.load_state_vector(payload["normaliser"].numpy())
    if payload["config"]["policy"]["normalise_observations"]:
        policy.set_input_statistics(normaliser.mean, normaliser.var)
    return policy, normaliser, payload


def shipped_models() -> list[str]:
    """Names of the models shipped under models/ (each a directory with a checkpoint.pt)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / LATEST).is_file())


def resolve_model(path: str | Path) -> Path:
    """A checkpoint file, run directory or model directory; a bare name (e.g. "walk") means models/<name>."""
    candidate = Path(path)
    if not candidate.exists() and len(candidate.parts) == 1 and (MODELS_DIR / candidate).is_dir():
        return MODELS_DIR / candidate
    return candidate


class Agent:
    """A trained lrun policy: `act` maps env observations to env actions; `make_env` builds its env."""

    def __init__(self, policy: Policy, normaliser: RunningNormaliser | None, config: TrainConfig, **facts: Any):
        self.policy = policy
        self.normaliser = normaliser
        self.config = config
        self.checkpoint: Path | None = facts.get("checkpoint")
        self.iteration: int = int(facts.get("iteration", 0))
        self.env_steps: int = int(facts.get("env_steps", 0))
        env = config.env
        self.feature_map = config.policy.features
        self._stream: FeatureStream | None = None  # what a feature map with memory remembers, per batch row
        if env.id == ENV_ID:
            self.obs_size, self.act_size = TASK_SIZE, ACT_SIZE
            self.action_low, self.action_high = np.zeros(ACT_SIZE), np.ones(ACT_SIZE)
        else:
            probe = self._build(env.id, {"kwargs": dict(env.kwargs)}, None)  # a gymnasium env: its space says
            action_space = probe.action_space
            probe.close()
            self.obs_size, self.act_size = policy.obs_size, int(np.prod(action_space.shape))
            self.action_low = np.asarray(action_space.low, np.float64)
            self.action_high = np.asarray(action_space.high, np.float64)

    @classmethod
    def load(cls, path: str | Path) -> Agent:
        """Load a checkpoint file, a run directory (its latest checkpoint) or a shipped model ("walk" or its
        directory). Raises `CheckpointError` with one line when there is none or it is not an lrun checkpoint."""
        target = resolve_model(path)
        try:
            policy, normaliser, payload = load_policy(target)
        except CheckpointError as exc:
            shipped = shipped_models()
            hint = f" (shipped models: {', '.join(shipped)})" if shipped and not Path(path).exists() else ""
            raise CheckpointError(f"{exc}{hint}") from None
        return cls.from_loaded(policy, normaliser, payload, resolve_checkpoint(target))

    @classmethod
    def from_loaded(
        cls, policy: Policy, normaliser: RunningNormaliser, payload: dict[str, Any], checkpoint: Path
    ) -> Agent:
        """The agent of what `load_policy` returned (the normaliser is used where the run normalised)."""
        config = config_from_dict(payload["config"])
        return cls(
            policy,
            normaliser if config.policy.normalise_observations else None,
            config,
            checkpoint=checkpoint,
            iteration=payload.get("iteration", 0),
            env_steps=payload.get("env_steps", 0),
        )

    # -- acting ---------------------------------------------------------------------------------------------

    def _batch(self, obs: Any) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float64)
        if x.ndim not in (1, 2) or x.shape[-1] != self.obs_size:
            raise ValueError(
                f"lrun Agent: expected one observation of {self.obs_size} values from {self.config.env.id} "
                f"(or a batch of shape (n, {self.obs_size})), got shape {x.shape}"
            )
        if not np.isfinite(x).all():
            raise ValueError("lrun Agent: the observation holds NaN or infinite values")
        return x[None] if x.ndim == 1 else x

    def act_with_details(self, obs: Any, deterministic: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(env actions, log-probabilities of the raw actions, values) for a batch of env observations; what
        `lrun eval` stores beside each step."""
        batch = self._batch(obs)
        if self._stream is None or self._stream.rows != len(batch):
            self._stream = FeatureStream(self.feature_map, len(batch))
        seen = self._stream(batch)  # the identity map passes gymnasium envs' values
        normalised = self.normaliser.normalise(seen, clip=False) if self.normaliser is not None else seen
        raw, logprob, value = self.policy.act(np.asarray(normalised, np.float32), deterministic=deterministic)
        actions = self.policy.env_action(raw, self.action_low, self.action_high).astype(np.float32)
        return actions, logprob, value

    def reset(self, rows: Any = None) -> None:
        """Start new episodes: forget what the policy remembers of earlier observations (all rows, or the batch
        rows named). Only a policy with memory (`policy.features = "relative-v2"`) keeps any; it also notices a
        new episode by itself where the pelvis jumps back to the start."""
        if self._stream is None:
            return
        if rows is not None:
            rows = np.asarray(rows)
            rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(int)
        self._stream.reset(rows)

    def act(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """The action for one env observation (shape (41,) -> (18,)) or a batch ((n, 41) -> (n, 18)), float32
        within the env's action box. deterministic=False samples (seed it with `torch.manual_seed`)."""
        actions, _, _ = self.act_with_details(obs, deterministic)
        return actions[0] if np.ndim(obs) == 1 else actions

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True
    ) -> tuple[np.ndarray, None]:
        """Stable-Baselines3's signature: (action, None); `episode_start` (one bool per row) resets the memory of
        a policy that keeps one (`reset`)."""
        if episode_start is not None:
            starts = np.atleast_1d(np.asarray(episode_start, bool))
            if self._stream is not None and self._stream.rows == len(starts):
                self.reset(starts)
        return self.act(observation, deterministic), None

    # -- its env --------------------------------------------------------------------------------------------

    def env_kwargs(self, setting: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments of `lrun.env.factory.make_env` for the env this policy was trained on, or for a
        named setting (`lrun.env.settings.SETTINGS`: "round2", "flat") at the trained control rate, with
        `overrides` (difficulty, max_obstacles, physics, frame_skip, or any env keyword) on top."""
        env = self.config.env
        kwargs = {k: v for k, v in env.kwargs.items() if k not in TRAINING_ONLY_KWARGS}
        built = dict(
            env_id=env.id,
            difficulty=env.difficulty,
            max_obstacles=env.max_obstacles,
            physics=env.physics,
            frame_skip=env.frame_skip,
        )
        if setting is not None:
            from lrun.env.settings import SETTINGS

            if env.id != ENV_ID:
                raise ValueError(f"setting {setting!r} is a task of {ENV_ID}; this policy was trained on {env.id!r}")
            if setting not in SETTINGS:
                raise ValueError(f"unknown setting {setting!r}: choose one of {', '.join(SETTINGS)}")
            s = SETTINGS[setting]
            built.update(difficulty=s.difficulty, max_obstacles=s.obstacles, physics=s.physics)
            kwargs["weakening"] = s.weakening
        for key in ("difficulty", "max_obstacles", "physics", "frame_skip"):
            if key in overrides:
                built[key] = overrides.pop(key)
        kwargs.update(overrides)
        return {**built, "kwargs": kwargs}

    def make_env(self, setting: str | None = None, render_mode: str | None = None, **overrides: Any) -> gym.Env:
        """The env this policy was trained on (task reward, no shaping; it starts at rest), or a named setting
        ("round2": the 2017 round 2 as graded) with the trained frame skip. `render_mode="rgb_array"` draws it."""
        spec = self.env_kwargs(setting, **overrides)
        return self._build(spec.pop("env_id"), spec, render_mode)

    def _build(self, env_id: str, spec: dict[str, Any], render_mode: str | None) -> gym.Env:
        from lrun.env.factory import make_env

        kwargs = dict(spec.pop("kwargs", {}))
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        return make_env(env_id, kwargs=kwargs, **spec)

    def trained_on(self) -> str:
        """The task it was trained on, in words (env id, difficulty, obstacles, physics, frame skip)."""
        env = self.config.env
        if env.id != ENV_ID:
            return f"{env.id}, frame skip {env.frame_skip}"
        obstacles = f"{env.max_obstacles} obstacles" if env.difficulty else "no obstacles"
        return f"{env.id}: difficulty {env.difficulty}, {obstacles}, {env.physics} physics, frame skip {env.frame_skip}"

    def describe(self) -> str:
        """One line: what the policy is and what it was trained on."""
        return (
            f"{self.config.run.algorithm.upper()} policy {self.policy.spec()['kind']} "
            f"{list(self.config.policy.hidden_sizes)} from {self.checkpoint} (iteration {self.iteration}, "
            f"{self.env_steps:,} env steps), trained on {self.trained_on()}"
        )

    def __repr__(self) -> str:
        return f"<lrun.Agent {self.describe()}>"


def load(path: str | Path) -> Agent:
    """`Agent.load`: a trained policy from a checkpoint file, run directory or shipped model."""
    return Agent.load(path)
