"""Typed training configuration: TOML file + `--set section.key=value` overrides, validated up front.

Every rank parses and validates the configuration itself before any MPI call, so a bad key or value fails on
every rank at once with the same one-line message, and no rank is left waiting in a collective.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrun.env import ENV_ID


class ConfigError(ValueError):
    """A configuration problem, with the offending key named."""


def doc(text: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a one-line help text (shown by `lrun config-keys` and in the README)."""
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class EnvConfig:
    """Which environment the simulators step."""

    id: str = doc(
        "gymnasium id: lrun/Run-v0, lrun/Sleep-v0 (RunEnv's shapes and step time without physics, for scaling "
        "measurements), or gymnasium:<id> for any gymnasium env",
        ENV_ID,
    )
    difficulty: int = doc("Learning to Run difficulty: 0 no obstacles, 1 obstacles, 2 obstacles + weak psoas", 0)
    max_obstacles: int = doc("obstacles per episode at difficulty >= 1 (3 in round 1, 10 in round 2)", 3)
    physics: str = doc(
        "physics preset: graders-2017 (RK-Merson at OpenSim's default 1e-3, as the 2017 graders ran), accurate "
        "(RK-Merson 5e-5, osim-rl 2.x since 2018) or fast (semi-explicit Euler 1e-2, for training); the earlier "
        "names reference (= accurate) and medium (= graders-2017) are still accepted",
        "graders-2017",
    )
    frame_skip: int = doc("repeat each action this many env steps (rewards summed)", 1)
    kwargs: dict = doc(
        "extra keyword arguments of the env: gymnasium.make's for gymnasium:<id>; for lrun/Run-v0 init_speed "
        "(m/s, or a [low, high] range drawn per episode: every training episode starts with a push forwards; "
        "lrun eval always starts at rest), obstacle_radius_scale (m: radii 0.05 + Exp(scale), 0.05 as in 2017 "
        "and in lrun eval; more trains on bigger obstacles) and fault_every (fault injection); for lrun/Sleep-v0 "
        "step_seconds (default 0.0025) and episode_steps (default 1000)",
        default_factory=dict,
    )


@dataclass
class RewardConfig:
    """Reward shaping (lrun/Run-v0): the reward is sum(weight * term); the task reward is always logged too."""

    weights: dict = doc(
        "term -> weight; empty: the task's own reward. Terms: progress, ligament, capped_progress, "
        "knee_bend, knee_hyperextension, speed_target, alive, upright, head_ahead, footstep, fall",
        default_factory=dict,
    )
    speed_cap: float = doc("m/s up to which capped_progress counts pelvis progress", 1.5)
    speed_target: float = doc("m/s the speed_target term aims at", 3.0)
    knee_bend_max: float = doc("rad of knee flexion up to which knee_bend counts", 0.6)
    knee_extension_max: float = doc("rad of knee extension past straight beyond which knee_hyperextension counts", 0.1)
    step_margin: float = doc("m: footstep counts a foot as leading once its ankle is this far ahead", 0.05)
    step_advance: float = doc("m the pelvis must advance between two counted footsteps", 0.1)


@dataclass
class LayoutConfig:
    """How the MPI ranks are used."""

    learners: int = doc("learner ranks (they average gradients by Allreduce); every other rank is a simulator", 1)
    envs_per_rank: int = doc("envs each simulator rank steps in turn", 8)
    steps_per_env: int = doc(
        "steps (decisions) each env collects per iteration: the rollout's length, for every algorithm (formerly "
        "ppo.steps_per_env, still accepted)",
        128,
    )
    ranks: int = doc("expected world size; 0 accepts any size that fits the layout", 0)


@dataclass
class PolicyConfig:
    """The actor-critic networks."""

    hidden_sizes: list[int] = doc("hidden layer sizes of both MLPs", default_factory=lambda: [64, 64])
    activation: str = doc("tanh, relu or elu", "tanh")
    distribution: str = doc(
        "gaussian (state-independent std), beta, or squashed (tanh of a Gaussian with state-dependent std: SAC)",
        "gaussian",
    )
    init_log_std: float = doc("initial log std of the Gaussian, in [-1, 1] action units", -0.5)
    normalise_observations: bool = doc("normalise observations by running statistics merged over ranks", True)
    features: str = doc(
        "what the networks see of lrun/Run-v0's 41 observations (lrun/env/features.py): task (as they are), "
        "relative-v1 (every x relative to the pelvis) or relative-v2 (relative-v1 + the last obstacle the pelvis "
        "passed, remembered; a relative-v1 parent carries into it); the store and the graders' metrics keep the 41 "
        "values",
        "task",
    )


@dataclass
class PPOConfig:
    """Proximal policy optimisation."""

    gamma: float = doc("discount factor", 0.99)
    reward_scale: float = doc("multiply rewards by this for the value and advantage maths (logs stay unscaled)", 1.0)
    gae_lambda: float = doc("GAE lambda", 0.95)
    learning_rate: float = doc("Adam learning rate", 3e-4)
    lr_schedule: str = doc("constant, or linear decay to 0 over the run's iterations", "linear")
    epochs: int = doc("passes over each iteration's batch", 10)
    minibatches: int = doc("minibatches per epoch (per learner)", 8)
    clip_coef: float = doc("PPO ratio clip", 0.2)
    clip_value_loss: bool = doc("clip the value update like the policy ratio", False)
    ent_coef: float = doc("entropy bonus weight", 0.0)
    vf_coef: float = doc("value loss weight", 0.5)
    max_grad_norm: float = doc("gradient norm clip", 0.5)
    normalise_advantages: bool = doc("normalise advantages per minibatch", True)
    target_kl: float = doc(
        "stop an iteration's epochs once a minibatch's approx KL (mean over learners) passes 1.5 x this "
        "(Spinning Up, SB3); 0: always run every epoch",
        0.0,
    )
    mirror: bool = doc(
        "double every batch with its left/right mirror image (legs swapped in observations and excitations, "
        "same advantages), as the 2017 winner did; lrun/Run-v0 only",
        False,
    )
    symmetry_loss: float = doc(
        "weight of a loss on the squared difference (summed over excitations) between the policy's mean action "
        "at a state and its mirrored mean action at the mirror image (Yu, Turk & Liu 2018); 0: off",
        0.0,
    )
    mirror_min_asymmetry: float = doc(
        "mirror only samples whose normalised features differ from their mirror image by at least this RMS "
        "(in standard deviations): a policy trained on mirrored copies of symmetric states (the task's start) "
        "moves both legs alike there for ever; 0: mirror every sample",
        0.0,
    )


@dataclass
class SACConfig:
    """Soft actor-critic, the off-policy learner (run.algorithm = "sac"; policy.distribution = "squashed")."""

    learning_rate: float = doc("Adam learning rate of actor, critics and temperature", 3e-4)
    batch_size: int = doc("transitions per gradient step", 256)
    gamma: float = doc("discount factor (per decision)", 0.99)
    tau: float = doc("Polyak rate of the target critics", 0.005)
    init_alpha: float = doc("initial entropy temperature", 0.2)
    target_entropy: float = doc("target entropy per action dimension (SAC's heuristic: -1)", -1.0)
    reward_scale: float = doc("multiply rewards by this in the critics' targets (logs stay unscaled)", 1.0)
    hidden_sizes: list[int] = doc("hidden layer sizes of the two Q networks", default_factory=lambda: [256, 256])
    updates_per_step: float = doc("gradient steps per new decision (update-to-data ratio)", 0.5)
    learning_starts: int = doc("decisions collected (over all simulators) before the first update", 10_000)
    critic_warmup: int = doc(
        "decisions after sac.learning_starts during which only the critics learn (the actor and the temperature "
        "stay as they are): a run that starts from a trained policy lets the critics meet the new data first",
        0,
    )
    buffer_size: int = doc("transitions the replay buffer keeps (per learner)", 1_000_000)
    save_buffer: bool = doc(
        "keep each learner's replay buffer in checkpoints/replay-LLL.h5 (the slots filled since the last checkpoint "
        "are written at each checkpoint and at a stop signal), so --resume and a requeued job continue with it "
        "instead of refilling it (~0.4 kB per RunEnv transition on disk)",
        True,
    )
    overlap: bool = doc(
        "simulators collect the next iteration while the learner updates (the acting policy is one iteration's "
        "update behind; with simulators on their own ranks, not in serial mode)",
        True,
    )
    mirror: bool = doc("also store every transition's left/right mirror image (lrun/Run-v0)", False)
    mirror_min_asymmetry: float = doc(
        "store the mirror image only of states that differ from it by at least this RMS (normalised units)", 0.0
    )


@dataclass
class RunConfig:
    """Length, checkpoints and bookkeeping of a run."""

    iterations: int = doc("iterations (the run ends after this many in total, resumes included)", 100)
    algorithm: str = doc(
        "the learner: ppo (on-policy, [ppo]) or sac (soft actor-critic with a replay buffer, [sac]; needs "
        "policy.distribution = squashed). Rollouts are layout.steps_per_env steps of every env per iteration "
        "either way",
        "ppo",
    )
    seed: int = doc("base seed of networks, minibatch order and every env's episode seeds", 0)
    run_dir: str = doc("directory for checkpoints, logs and the resolved config", "runs/default")
    init_from: str = doc(
        "start a fresh run from this checkpoint's policy and normaliser (a curriculum's parent "
        "stage); empty: random initialisation",
        "",
    )
    checkpoint_every: int = doc("write a checkpoint every this many iterations (and always at the end)", 10)
    store_trajectories: bool = doc("record every step and episode in trajectories/rank-NNNN.h5 (HDF5)", True)
    sync_check_every: int = doc(
        "every this many iterations assert that learners hold identical parameters (the policy; with SAC also the "
        "critics, their targets and the temperature)",
        10,
    )
    wait_sleep: float = doc("seconds a waiting rank sleeps between polls (MPICH's blocking waits spin)", 0.002)
    tensorboard: bool = doc(
        "also write TensorBoard event files (RUN_DIR/tb, step = env steps) where the tensorboard package is "
        "installed (pip install -e '.[track]'); without it lrun says so once and carries on",
        True,
    )
    wandb_project: str = doc(
        "mirror the TensorBoard scalars to this Weights & Biases project (the CLI's --track sets it; needs wandb "
        "and run.tensorboard; WANDB_MODE=offline on nodes without internet, then wandb sync); empty: off",
        "",
    )
    progress: str = doc(
        "auto, bar or lines: bar redraws one line on the terminal that rank 0's output reaches (through mpiexec "
        "too); lines prints one line per iteration (log files, batch jobs); auto: bar where a terminal is "
        "reachable (the CLI's --progress sets it)",
        "auto",
    )


@dataclass
class BlendConfig:
    """Policy blending: freeze a trained policy and blend its output with this config's (bigger) network."""

    source: str = doc(
        "checkpoint (or run directory) of the trained policy to freeze; empty: no blending. Actions follow "
        "(1 - c) * frozen + c * new in distribution-parameter space",
        "",
    )
    start: float = doc("blend coefficient c at the first iteration (0: act exactly like the frozen policy)", 0.0)
    end: float = doc("blend coefficient c after the ramp (1: the new network alone)", 1.0)
    ramp_iterations: int = doc("iterations over which c moves linearly from start to end", 100)
    distill_coef: float = doc(
        "weight of the new network's distillation of the frozen policy, times (1 - c), added to the PPO loss or "
        "SAC's actor loss (0: off)",
        1.0,
    )
    temperature: str = doc(
        "SAC's temperature while c < 1: hold (keep the parent's: the frozen policy dominates the blend's entropy, "
        "which no gradient can move, so tuning towards the target entropy only inflates the temperature) or tune "
        "(tune it throughout, as before 2026-12-04)",
        "hold",
    )


@dataclass
class CloneConfig:
    """Behavioural cloning: before training (PPO or SAC), the network imitates a trained policy on its stored states."""

    teacher: str = doc("checkpoint (or run directory) of the policy to imitate; empty: no cloning", "")
    store: str = doc("run directory whose trajectories give the states; empty: the teacher's run directory", "")
    max_states: int = doc("use at most this many of the most recently stored states", 100_000)
    epochs: int = doc("passes over the states", 20)
    minibatch_size: int = doc("states per gradient step", 256)
    learning_rate: float = doc("Adam learning rate of the imitation", 1e-3)
    value_coef: float = doc("weight of the critic's regression onto the teacher's critic (0: off)", 0.5)
    holdout_fraction: float = doc("share of the states held out to measure the imitation loss", 0.1)


@dataclass
class TrainConfig:
    """Everything `lrun train` needs."""

    env: EnvConfig = field(default_factory=EnvConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    run: RunConfig = field(default_factory=RunConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    clone: CloneConfig = field(default_factory=CloneConfig)

    def __post_init__(self) -> None:
        # not a field: what `build_config` has to tell the user (a key under its old name), for rank 0's log
        self.notes: list[str] = []

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for JSON and checkpoints)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The resolved config as JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


#: section name -> its dataclass (resolved from the annotations, which are strings under __future__ annotations)
SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(TrainConfig)[f.name] for f in dataclasses.fields(TrainConfig)
}


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation` where lossless (int -> float), else raise ConfigError."""
    origin = typing.get_origin(annotation)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r} ({type(value).__name__})")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r} ({type(value).__name__})")
        return value
    if isinstance(annotation, types.UnionType):  # pragma: no cover - no unions in the config today
        raise ConfigError(f"{key}: union types are not supported")
    raise ConfigError(f"{key}: unsupported type {annotation!r}")


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in known], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}; known: {', '.join(known)}")


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: a string (paths, names)
    return key, value


#: Keys that moved to another name (old -> new). A config file, a --set or a checkpoint's config that uses the
#: old name keeps working; `build_config` leaves a note naming the new key (rank 0 prints it).
MOVED_KEYS: dict[str, str] = {"ppo.steps_per_env": "layout.steps_per_env"}


def moved_key_note(old: str) -> str:
    """The one line that tells a user which key replaced `old`."""
    return f"note: {old} is now {MOVED_KEYS[old]} (the old name still works)"


def upgrade_keys(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A nested config dict (from TOML, config.json or a checkpoint) with every moved key under its new name,
    and a note for each moved key it held. ConfigError where it sets one key under both names, differently."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    notes = []
    for old, new in MOVED_KEYS.items():
        old_section, old_name = old.split(".")
        new_section, new_name = new.split(".")
        section = data.get(old_section)
        if not isinstance(section, dict) or old_name not in section:
            continue
        value = section.pop(old_name)
        target = data.setdefault(new_section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{new_section}: expected a table")
        if new_name in target and target[new_name] != value:
            raise ConfigError(
                f"{old} = {value!r} and {new} = {target[new_name]!r}: {old} is the old name of {new}; set only {new}"
            )
        target[new_name] = value
        notes.append(moved_key_note(old))
    return data, notes


def _set_table_entry(section_data: dict[str, Any], section: str, name: str, value: Any) -> None:
    """`--set section.table.entry=value`: set one entry of a table-valued key (`env.kwargs`, `reward.weights`),
    keeping the table's other entries from the file."""
    table, entry = name.split(".", 1)
    cls = SECTIONS.get(section)
    if cls is None:
        raise _unknown(section, list(SECTIONS))
    hints = typing.get_type_hints(cls)
    if table not in hints:
        raise _unknown(f"{section}.{table}", [f"{section}.{f.name}" for f in dataclasses.fields(cls)])
    if not (hints[table] is dict or typing.get_origin(hints[table]) is dict):
        raise ConfigError(f"{section}.{name}: {section}.{table} is not a table; set it as {section}.{table}=VALUE")
    current = section_data.get(table, {})
    if not isinstance(current, dict):
        raise ConfigError(f"{section}.{table}: expected a table, got {current!r}")
    section_data[table] = {**current, entry: value}


def build_config(data: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """Validate a nested dict (from TOML) plus `section.key=value` overrides into a `TrainConfig`; keys under an
    old name (`MOVED_KEYS`) are taken under their new one, with a note in the config's `notes`."""
    data, notes = upgrade_keys(data)
    for item in overrides or []:
        key, value = _parse_override(item)
        if key in MOVED_KEYS:  # an override under the old name overrides the new key as the new name would
            notes.append(moved_key_note(key))
            key = MOVED_KEYS[key]
        if "." not in key:
            raise ConfigError(f"--set key must be section.key, got {key!r}; sections: {', '.join(SECTIONS)}")
        section, name = key.split(".", 1)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: expected a table")
        if "." in name:  # one entry of a table-valued key (reward.weights.alive=0.25): merged into the table
            _set_table_entry(data[section], section, name, value)
        else:
            data[section][name] = value
    sections = {}
    for section, values in data.items():
        if section not in SECTIONS:
            raise _unknown(section, list(SECTIONS))
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a table of keys, got {values!r}")
        cls = SECTIONS[section]
        hints = typing.get_type_hints(cls)
        known = [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
        checked = {}
        for name, value in values.items():
            if name not in hints:
                raise _unknown(f"{section}.{name}", known)
            checked[name] = _check_type(f"{section}.{name}", value, hints[name])
        sections[section] = cls(**checked)
    config = TrainConfig(**sections)
    validate(config)
    config.notes = list(dict.fromkeys(notes))  # one note per moved key, however often the old name was used
    return config


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file if it is missing or not valid TOML."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} file {path} is a directory: name a TOML file")
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # an editor's byte-order mark is not a TOML error
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML config file (None: defaults only) and apply overrides."""
    return build_config(read_toml(path) if path is not None else {}, overrides)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved by `TrainConfig.to_dict` (checkpoints)."""
    return build_config(data)


#: Allowed values of every key that has a range: (test, what is allowed). Floats must also be finite.
RANGES: dict[str, tuple[Any, str]] = {
    "layout.learners": (lambda v: v >= 1, ">= 1"),
    "layout.envs_per_rank": (lambda v: v >= 1, ">= 1 (zero envs collect nothing)"),
    "layout.ranks": (lambda v: v >= 0, ">= 0 (0 accepts any world size)"),
    "env.difficulty": (lambda v: v in (0, 1, 2), "0, 1 or 2"),
    "env.max_obstacles": (lambda v: v >= 0, ">= 0"),
    "env.frame_skip": (lambda v: v >= 1, ">= 1"),
    "reward.speed_cap": (lambda v: v > 0, "> 0"),
    "reward.knee_bend_max": (lambda v: v >= 0, ">= 0"),
    "reward.knee_extension_max": (lambda v: v >= 0, ">= 0"),
    "reward.step_margin": (lambda v: v >= 0, ">= 0"),
    "reward.step_advance": (lambda v: v >= 0, ">= 0"),
    "policy.activation": (lambda v: v in ("tanh", "relu", "elu"), "tanh, relu or elu"),
    "policy.distribution": (lambda v: v in ("gaussian", "beta", "squashed"), "gaussian, beta or squashed"),
    "run.algorithm": (lambda v: v in ("ppo", "sac"), "ppo or sac"),
    "sac.learning_rate": (lambda v: v > 0, "> 0"),
    "sac.batch_size": (lambda v: v >= 1, ">= 1"),
    "sac.gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "sac.tau": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "sac.init_alpha": (lambda v: v > 0, "> 0"),
    "sac.reward_scale": (lambda v: v > 0, "> 0"),
    "sac.updates_per_step": (lambda v: v > 0, "> 0"),
    "sac.learning_starts": (lambda v: v >= 0, ">= 0"),
    "sac.critic_warmup": (lambda v: v >= 0, ">= 0"),
    "sac.buffer_size": (lambda v: v >= 1, ">= 1"),
    "sac.mirror_min_asymmetry": (lambda v: v >= 0, ">= 0"),
    "policy.init_log_std": (lambda v: -20 <= v <= 2, "in [-20, 2]"),
    "layout.steps_per_env": (lambda v: v >= 1, ">= 1"),
    "ppo.gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "ppo.reward_scale": (lambda v: v > 0, "> 0"),
    "ppo.gae_lambda": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "ppo.learning_rate": (lambda v: v > 0, "> 0"),
    "ppo.lr_schedule": (lambda v: v in ("constant", "linear"), "constant or linear"),
    "ppo.epochs": (lambda v: v >= 1, ">= 1"),
    "ppo.minibatches": (lambda v: v >= 1, ">= 1"),
    "ppo.clip_coef": (lambda v: v > 0, "> 0"),
    "ppo.ent_coef": (lambda v: v >= 0, ">= 0"),
    "ppo.vf_coef": (lambda v: v >= 0, ">= 0"),
    "ppo.max_grad_norm": (lambda v: v > 0, "> 0"),
    "ppo.target_kl": (lambda v: v >= 0, ">= 0 (0: off)"),
    "ppo.mirror_min_asymmetry": (lambda v: v >= 0, ">= 0 (0: mirror every sample)"),
    "ppo.symmetry_loss": (lambda v: v >= 0, ">= 0 (0: off)"),
    "run.iterations": (lambda v: v >= 1, ">= 1"),
    "run.seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    "run.run_dir": (lambda v: bool(v.strip()), "a directory name (not empty)"),
    "run.checkpoint_every": (lambda v: v >= 1, ">= 1"),
    "run.sync_check_every": (lambda v: v >= 1, ">= 1"),
    "run.wait_sleep": (lambda v: 0 <= v <= 1, "in [0, 1] seconds"),
    "run.progress": (lambda v: v in ("auto", "bar", "lines"), "auto, bar or lines"),
    "blend.start": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "blend.end": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "blend.ramp_iterations": (lambda v: v >= 0, ">= 0"),
    "blend.distill_coef": (lambda v: v >= 0, ">= 0"),
    "blend.temperature": (lambda v: v in ("hold", "tune"), "hold or tune"),
    "clone.max_states": (lambda v: v >= 2, ">= 2"),
    "clone.epochs": (lambda v: v >= 1, ">= 1"),
    "clone.minibatch_size": (lambda v: v >= 1, ">= 1"),
    "clone.learning_rate": (lambda v: v > 0, "> 0"),
    "clone.value_coef": (lambda v: v >= 0, ">= 0"),
    "clone.holdout_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r}: must be {allowed}")


def validate(config: TrainConfig) -> None:
    """Value checks that do not depend on the MPI world (those live in `lrun.mpi.check_layout`): every key's
    range, every float finite, and the keys that depend on each other. One line naming key, value and rule."""
    import math

    for section in SECTIONS:
        for f in dataclasses.fields(SECTIONS[section]):
            key, value = f"{section}.{f.name}", getattr(getattr(config, section), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise _bad(key, value, "a finite number")
            if key in RANGES and not RANGES[key][0](value):
                raise _bad(key, value, RANGES[key][1])
    if not config.sac.hidden_sizes or any(size < 1 for size in config.sac.hidden_sizes):
        raise _bad("sac.hidden_sizes", config.sac.hidden_sizes, "a list of one or more positive sizes")
    sizes = config.policy.hidden_sizes
    if not sizes or min(sizes) < 1:
        raise _bad("policy.hidden_sizes", sizes, "a list of one or more positive sizes")
    batch = config.layout.steps_per_env * config.layout.envs_per_rank  # the smallest batch a learner can get
    if config.ppo.minibatches > batch:
        raise _bad(
            "ppo.minibatches",
            config.ppo.minibatches,
            f"<= the samples of one simulator's rollout (layout.steps_per_env x layout.envs_per_rank = {batch})",
        )
    if sum(bool(x) for x in (config.run.init_from, config.blend.source, config.clone.teacher)) > 1:
        raise ConfigError(
            "run.init_from, blend.source and clone.teacher are three ways to start from a trained policy: "
            "set at most one"
        )
    from lrun.env.physics import PHYSICS_NAMES, PRESETS

    if config.env.physics not in PHYSICS_NAMES:
        raise _bad("env.physics", config.env.physics, f"one of {', '.join(sorted(PRESETS))}")
    if config.env.id == ENV_ID and config.env.kwargs:
        import inspect

        from lrun.env.run_env import RunEnv

        own_keys = ("self", "difficulty", "max_obstacles", "physics")  # env.<key> sets these
        accepted = [n for n in inspect.signature(RunEnv.__init__).parameters if n not in own_keys]
        for name in config.env.kwargs:
            if name not in accepted:
                raise ConfigError(f"env.kwargs.{name}: not an option of {ENV_ID} (options: {', '.join(accepted)})")
        from lrun.env.run_env import check_init_speed, check_radius_scale

        for name, check in (("init_speed", check_init_speed), ("obstacle_radius_scale", check_radius_scale)):
            if name in config.env.kwargs:
                try:
                    check(config.env.kwargs[name])
                except ValueError as exc:
                    raise ConfigError(f"env.kwargs.{exc}") from None
    if config.reward.weights:
        from lrun.env.shaping import check_weights

        try:
            check_weights(config.reward.weights)
        except ValueError as exc:
            raise ConfigError(f"reward.weights: {exc}") from None
        for name, weight in config.reward.weights.items():
            if not math.isfinite(weight):
                raise _bad(f"reward.weights.{name}", weight, "a finite number")
        if config.env.id != ENV_ID:
            raise ConfigError(f"reward.weights: reward shaping needs env.id = {ENV_ID}")
    from lrun.env.features import check_features

    try:
        check_features(config.policy.features, config.env.id)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.ppo.mirror and config.env.id != ENV_ID:
        raise ConfigError(f"ppo.mirror needs env.id = {ENV_ID}")
    if config.ppo.symmetry_loss > 0 and config.env.id != ENV_ID:
        raise ConfigError(f"ppo.symmetry_loss needs env.id = {ENV_ID}")
    if config.sac.mirror and config.env.id != ENV_ID:
        raise ConfigError(f"sac.mirror needs env.id = {ENV_ID}")
    sac = config.run.algorithm == "sac"
    if sac != (config.policy.distribution == "squashed"):
        raise ConfigError(
            "run.algorithm = sac trains policy.distribution = squashed, and only SAC trains it: set both or neither"
        )
    if config.run.wandb_project:
        if not config.run.tensorboard:
            raise ConfigError("run.wandb_project mirrors the TensorBoard scalars: set run.tensorboard = true too")
        import importlib.util

        for module, package in (("wandb", "wandb"), ("tensorboard", "tensorboard")):
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"--track / run.wandb_project needs the {package} package: pip install -e '.[track]'")


def describe_keys() -> str:
    """Every config key with its type, default and help text."""
    lines = []
    defaults = TrainConfig()
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]  {cls.__doc__}")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = getattr(getattr(defaults, section), f.name)
            type_name = getattr(hints[f.name], "__name__", str(hints[f.name]))
            lines.append(f"  {f.name} ({type_name}, default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)
