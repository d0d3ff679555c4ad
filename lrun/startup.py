"""How a run starts, resolved before any MPI traffic: the problem's sizes, the policy to train and where it
comes from (new, resumed, a parent stage, a blend or a clone), and every check on the run directory and the
checkpoints involved. Local and deterministic, so every rank finds the same answer (and the same error) alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from lrun import mpi as lmpi
from lrun.checkpoint import (
    CheckpointError,
    check_compatible,
    collapse_student,
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
)
from lrun.config import ConfigError, TrainConfig
from lrun.env import ENV_ID
from lrun.env.factory import env_factory, reward_terms_of
from lrun.env.features import IDENTITY, extension_of, feature_size
from lrun.learn.blend import build_from_spec, new_blend
from lrun.learn.policy import ActorCritic, Policy
from lrun.learn.transfer import insert_input_columns
from lrun.progress import PROGRESS_FILE
from lrun.store.reader import RunStore, StoreError


@dataclass
class Problem:
    """Sizes every rank derives from the config before any MPI call."""

    obs_size: int  # what the networks see (after the feature map)
    act_size: int
    distance_index: int | None
    reward_terms: tuple[str, ...] = ()
    task_obs_size: int = 0  # what the env returns and the store records
    feature_map: str = IDENTITY


@dataclass
class Start:
    """What a run starts from, found by `startup_checks` on every rank alike."""

    problem: Problem
    spec: dict  # the architecture of the policy this run trains
    payload: dict | None = None  # the checkpoint a resumed run continues
    source: dict | None = None  # the trained policy it starts from (run.init_from, blend.source or clone.teacher)
    how: str = "new"  # new | resume | init | blend | clone
    resume_path: Path | None = None  # the checkpoint file a resumed run continues (its directory may hold replay files)


class StartupError(RuntimeError):
    """A problem found before any MPI traffic; every rank finds it alike, so every rank can just exit."""


class AlgorithmChecks(Protocol):
    """What an algorithm checks before a run starts (`lrun.training`'s algorithms have these): local and
    deterministic, raising ConfigError or CheckpointError with one line."""

    def check_world(self, world_size: int) -> None:
        """The layout on a world of this size suits the algorithm."""

    def check_resume(self, payload: dict, path: Path) -> None:
        """A checkpoint to resume holds what the algorithm restores, in the config's sizes."""


def check_rank_files(run_dir: str | Path) -> None:
    """Every trajectory file a resume would cut back and append to opens as an lrun store: checked on every rank
    before anything is written (config.json, the cut-back), so a damaged file leaves the run as it was."""
    from lrun.store.reader import check_file, rank_files

    for path in rank_files(run_dir):
        try:
            check_file(path)
        except StoreError as exc:
            raise StoreError(
                f"{exc}; nothing was changed: restore the file, or move it away to resume without its stored steps"
            ) from None


def startup_checks(
    config: TrainConfig, resume: str | None, world_size: int, algorithm: AlgorithmChecks | None = None
) -> Start:
    """Layout, env and checkpoint checks (and the algorithm's own, where given): local and deterministic, so a
    problem fails on every rank alike."""
    layout_cfg = config.layout
    lmpi.check_layout(world_size, layout_cfg.learners, layout_cfg.envs_per_rank, layout_cfg.ranks)
    if algorithm is not None:
        algorithm.check_world(world_size)
    problem = probe_env(config)
    plain = config_spec(config, problem)
    run_dir = config.run.run_dir
    check_run_dir(run_dir)
    if resume is None and holds_checkpoint(run_dir):
        raise CheckpointError(
            f"run directory {run_dir} already holds a run ({latest_checkpoint(run_dir)}): continue it "
            f"with --resume {run_dir}, or choose another run.run_dir"
        )
    found = lrun_data_in(run_dir) if resume is None else []
    if found:
        raise CheckpointError(
            f"run directory {run_dir} holds lrun data ({', '.join(found)}) but no checkpoint to resume from (a "
            f"run stopped before its first checkpoint): remove it (rm -r {run_dir}) or choose another run.run_dir"
        )
    if resume is not None:
        resume_path = resolve_checkpoint(resume)
        payload = load_checkpoint(resume_path)
        if "exported" in payload["meta"]:
            raise CheckpointError(
                f"{resume_path}: an exported checkpoint (lrun export: no optimiser state) cannot be resumed; start "
                "a new run from it with run.init_from (or blend.source, clone.teacher)"
            )
        check_resume_target(resume_path, config.run.run_dir)
        spec = plain
        if config.blend.source:  # the frozen part travels in the checkpoint; the source file is not needed
            theirs = payload["meta"].get("policy_spec") or {}
            spec = {"kind": "blend", "frozen": theirs.get("frozen", {}), "student": plain}
        check_compatible(payload, resume_path, problem.obs_size, problem.act_size, spec)
        if algorithm is not None:
            algorithm.check_resume(payload, resume_path)
        if config.run.store_trajectories:
            check_rank_files(run_dir)
        return Start(problem, spec, payload=payload, how="resume", resume_path=resume_path)
    origins = [
        (key, how, where)
        for key, how, where in (
            ("run.init_from", "init", config.run.init_from),
            ("blend.source", "blend", config.blend.source),
            ("clone.teacher", "clone", config.clone.teacher),
        )
        if where
    ]
    if not origins:  # config validation allows at most one
        return Start(problem, plain)
    key, how, where = origins[0]
    path = resolve_checkpoint(where)
    source = load_checkpoint(path)
    source["path"] = str(path)
    their_features = source["config"]["policy"].get("features", IDENTITY)
    try:
        added = extension_of(problem.feature_map, their_features)
    except ValueError:
        raise CheckpointError(
            f"{path}: {key} was trained with policy.features = {their_features!r}, this run uses "
            f"{problem.feature_map!r}; they must match (--set policy.features={their_features}), or this run's "
            "must extend theirs (relative-v2 extends relative-v1)"
        ) from None
    their_skip = int(source["config"]["env"].get("frame_skip", 1))
    if their_skip != config.env.frame_skip:  # the same excitations held for another time are another policy
        raise CheckpointError(
            f"{path}: {key} acts every {their_skip} env steps (env.frame_skip), this run every "
            f"{config.env.frame_skip}; they must match (--set env.frame_skip={their_skip})"
        )
    theirs = source["meta"].get("policy_spec") or {}
    student = collapse_student(source)
    if student is not None:  # a finished blend (c = 1) is its new network alone: start from just that
        theirs = theirs["student"]
        source = {**source, "policy": student, "meta": {**source["meta"], "policy_spec": theirs}}
    if added:
        source = extend_source(source, added, path, key)
        theirs = source["meta"]["policy_spec"]
    if how == "init":
        if theirs.get("kind") == "blend":
            raise CheckpointError(
                f"{path}: {key} names a blend whose coefficient has not reached 1, so its new network cannot "
                f"act alone; blend it again (blend.source) or let its ramp finish"
            )
        check_compatible(source, path, problem.obs_size, problem.act_size, plain)
        return Start(problem, plain, source=source, how="init")
    # blend and clone take any architecture, as long as observations and actions match; a blend mixes
    # distribution parameters, so its distributions must match too (a clone imitates actions across families)
    check_compatible(source, path, problem.obs_size, problem.act_size, theirs)
    if how == "blend" and distribution_of(theirs) != plain["distribution"]:
        raise CheckpointError(
            f"{path}: {key} has a {distribution_of(theirs)} policy and policy.distribution is "
            f"{plain['distribution']!r}; a blend needs them to match (cloning does not)"
        )
    if how == "clone":
        check_clone_store(config.clone.store or source["config"]["run"]["run_dir"], problem.task_obs_size)
    spec = {"kind": "blend", "frozen": theirs, "student": plain} if how == "blend" else plain
    return Start(problem, spec, source=source, how=how)


def extend_source(source: dict, added: int, path: Path, key: str) -> dict:
    """A parent checkpoint carried onto a feature map that appends `added` features to its own: its networks
    (actor, value head, SAC critics and their targets) get zero weight from them, so they compute what they did,
    and its normaliser gets statistics for them that say "never varied" (they start afresh, `start_from`).
    Optimiser moments are left behind (a transfer starts its optimisers afresh)."""
    spec = source["meta"].get("policy_spec") or {}
    if spec.get("kind") != "mlp":
        raise CheckpointError(
            f"{path}: {key} is a {spec.get('kind', 'unknown')!r} policy; only a plain network (a blend whose ramp "
            "has finished is one) carries onto a feature map with more features"
        )
    old = int(spec["obs_size"])
    policy = dict(source["policy"])
    for part in ("actor", "critic"):
        sub = {k.removeprefix(f"{part}."): v for k, v in policy.items() if k.startswith(f"{part}.")}
        if sub:
            wider = insert_input_columns(sub, old, added)
            policy.update({f"{part}.{k}": v for k, v in wider.items()})
    optimizer = source.get("optimizer") or {}
    if "critic" in optimizer:  # SAC: twin critics (and targets) take features, then actions
        optimizer = {name: optimizer[name] for name in ("critic", "target", "log_alpha")}
        for name in ("critic", "target"):
            nets = dict(optimizer[name])
            for q in ("q1", "q2"):
                sub = {k.removeprefix(f"{q}."): v for k, v in nets.items() if k.startswith(f"{q}.")}
                nets.update({f"{q}.{k}": v for k, v in insert_input_columns(sub, old, added).items()})
            optimizer[name] = nets
    stats = source["normaliser"].numpy().astype(np.float64)
    if len(stats) == 2 * old + 1:  # the older form: one count for all features
        stats = np.concatenate([stats[: 2 * old], np.full(old, stats[-1])])
    if len(stats) != 3 * old:
        raise CheckpointError(f"{path}: {key}'s normaliser holds {len(stats)} values, not 3 x {old}")
    pad = np.zeros(added)  # mean 0, variance 0, count 0: never varied
    normaliser = np.concatenate([stats[:old], pad, stats[old : 2 * old], pad, stats[2 * old :], pad])
    spec = {**spec, "obs_size": old + added}
    meta = {**source["meta"], "obs_size": old + added, "policy_spec": spec}
    return {
        **source,
        "policy": policy,
        "optimizer": optimizer,
        "normaliser": torch.from_numpy(normaliser),
        "meta": meta,
    }


def probe_env(config: TrainConfig) -> Problem:
    """Build one env to learn the spaces (and to fail early, on every rank, on a bad env config)."""
    env = env_factory(config.env, config.reward)()
    try:
        task_obs_size = int(np.prod(env.observation_space.shape))
        act_size = int(np.prod(env.action_space.shape))
        terms = reward_terms_of(env)
    finally:
        env.close()
    name = config.policy.features
    distance_index = 1 if config.env.id == ENV_ID else None
    return Problem(feature_size(name, task_obs_size), act_size, distance_index, terms, task_obs_size, name)


def config_spec(config: TrainConfig, problem: Problem) -> dict:
    """The architecture of the network the [policy] section describes."""
    p = config.policy
    return {
        "kind": "mlp",
        "obs_size": problem.obs_size,
        "act_size": problem.act_size,
        "hidden_sizes": list(p.hidden_sizes),
        "activation": p.activation,
        "distribution": p.distribution,
    }


def build_policy(config: TrainConfig, problem: Problem) -> ActorCritic:
    """The actor-critic the config describes, initialised from the run seed (identical on every rank)."""
    torch.manual_seed(config.run.seed)
    p = config.policy
    return ActorCritic(problem.obs_size, problem.act_size, p.hidden_sizes, p.activation, p.distribution, p.init_log_std)


def initial_policy(config: TrainConfig, start: Start) -> Policy:
    """The policy a rank starts with (identical on every rank): built from the seed, then filled in from the
    resumed checkpoint, the parent (`init`), or the frozen policy of a new blend."""
    torch.manual_seed(config.run.seed)
    if start.how == "blend":
        student = build_policy(config, start.problem)
        frozen = build_from_spec(start.source["meta"]["policy_spec"])
        frozen.load_state_dict(start.source["policy"])
        return new_blend(frozen, start.source["normaliser"].numpy(), student)
    policy = build_from_spec(start.spec, config.policy.init_log_std)
    if start.how == "resume":
        policy.load_state_dict(start.payload["policy"])
    elif start.how == "init":
        policy.load_state_dict(start.source["policy"])
    return policy


def check_run_dir(run_dir: str | Path) -> None:
    """The run directory is usable: not a file, creatable and writable (ConfigError naming the path otherwise;
    an empty name is refused by the config's own checks)."""
    path = Path(run_dir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())  # nothing is created before the run starts
    if not existing.is_dir():
        what = "is a file, not a directory" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(f"run.run_dir {run_dir} {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} is not writable)"
        raise ConfigError(f"run.run_dir {run_dir}: not writable{where}")


#: What lrun writes into a run directory; any of them marks the directory as holding a run.
RUN_DATA = ("checkpoints", "trajectories", PROGRESS_FILE, "config.json", "ranks", "clone.csv")


def lrun_data_in(run_dir: str | Path) -> list[str]:
    """The lrun outputs present in `run_dir` (empty if none, or if it does not exist)."""
    run_dir = Path(run_dir)
    return [name for name in RUN_DATA if (run_dir / name).exists()]


def holds_checkpoint(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a checkpoint of its own (checkpoints/checkpoint.pt)."""
    return latest_checkpoint(run_dir).is_file()


def check_resume_target(checkpoint: Path, run_dir: str | Path) -> None:
    """`--resume` continues a run in its own directory; a checkpoint kept outside any run (models/...) is
    continued in a new, empty run directory, never in the checkpoint's own folder."""
    own = resumed_run_dir(checkpoint)
    target = Path(run_dir)
    if own is not None:
        if own.resolve() != target.resolve():
            raise ConfigError(
                f"--resume {checkpoint} continues the run in {own}, but run.run_dir is {target}: drop "
                f"run.run_dir to continue in place, or start a new run from it with run.init_from"
            )
        return
    if target.resolve() == checkpoint.parent.resolve():
        raise ConfigError(
            f"--resume {checkpoint}: a checkpoint kept outside a run directory is continued in a new "
            f"run.run_dir, not in {checkpoint.parent}"
        )
    if holds_checkpoint(target):
        raise CheckpointError(
            f"run directory {target} already holds a run: continue that one with --resume {target}, or choose "
            f"another run.run_dir to continue {checkpoint} in"
        )
    found = lrun_data_in(target)
    if found:
        raise CheckpointError(
            f"run directory {target} holds lrun data ({', '.join(found)}): choose an empty run.run_dir to "
            f"continue {checkpoint} in"
        )


def resumed_run_dir(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to (RUN/checkpoints/FILE), or None for a file kept elsewhere
    (a shipped model under models/, say)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None


def check_clone_store(store_dir: str, obs_size: int) -> None:
    """The store cloning learns from exists, holds steps, and its observations fit this env."""
    with RunStore(store_dir) as store:
        widths = {f["steps/obs"].shape[1] for f in store.files}
        rows = sum(f["steps/obs"].shape[0] for f in store.files)
    if widths != {obs_size}:
        raise StoreError(f"{store_dir}: stored observations have {sorted(widths)} values, this env {obs_size}")
    if rows < 2:
        raise StoreError(f"{store_dir}: the store holds {rows} steps; cloning needs stored states")


def distribution_of(spec: dict) -> str:
    """The action distribution of a policy spec (a blend's is its networks')."""
    return distribution_of(spec["student"]) if spec.get("kind") == "blend" else spec.get("distribution", "")
