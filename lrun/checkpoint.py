"""Checkpoints: written atomically, loaded safely (`torch.load(weights_only=True)`), checked for fit."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "lrun-checkpoint-1"
LATEST = "checkpoint.pt"
KEEP = 3


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, foreign or does not fit the config."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path:
    """Where a run's latest checkpoint is (RUN_DIR/checkpoints/checkpoint.pt), written or not."""
    return checkpoint_dir(run_dir) / LATEST


def save_checkpoint(run_dir: str | Path, payload: dict[str, Any], iteration: int) -> Path:
    """Write `payload` as checkpoints/iter-NNNNNN.pt and checkpoints/checkpoint.pt, each atomically.

    The data goes to a temporary file that is fsynced and then renamed over the target, so a crash at any
    moment leaves the previous checkpoint intact. Only the newest `KEEP` iteration files are kept.
    """
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".*.tmp-*"):  # left by a writer that crashed mid-write; only rank 0 writes here
        if not stale.name.endswith(f".tmp-{os.getpid()}"):
            stale.unlink(missing_ok=True)
    payload = {"format": FORMAT, **payload}
    target = directory / f"iter-{iteration:06d}.pt"
    for path in (target, directory / LATEST):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
        except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError from its writer
            tmp.unlink(missing_ok=True)
            raise CheckpointError(
                f"{directory}: cannot write the checkpoint of iteration {iteration} ({write_failure(exc)}); the "
                f"previous checkpoint is intact"
            ) from exc
        os.replace(tmp, path)
    for old in sorted(directory.glob("iter-*.pt"))[:-KEEP]:
        old.unlink()
    return target


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory / checkpoints directory meaning its latest checkpoint."""
    path = Path(path)
    for candidate in (path, path / LATEST, latest_checkpoint(path)):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"no checkpoint at {path} (looked for the file, {LATEST} in it and in checkpoints/)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; clear errors for missing, corrupt or foreign files."""
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt or not a checkpoint ({load_failure(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an lrun checkpoint (format {FORMAT!r} expected)")
    return payload


#: How torch's checkpoint writer words a write the disk cut short.
TORCH_SHORT_WRITE = ("unexpected pos", "inline_container", "PytorchStreamWriter failed writing")


def write_failure(exc: BaseException) -> str:
    """Why a write failed, in a few words: the OS's reason (e.g. 'No space left on device'), else the first line
    of the message (torch and h5py wrap the OS error in a RuntimeError)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    if any(sign in text for sign in TORCH_SHORT_WRITE):
        # torch's zip writer reports a write the disk cut short by its own internals ("[enforce fail at
        # inline_container.cc:...] . unexpected pos ..."), never by the OS's reason: a full disk or quota
        return "No space left on device: the disk (or your quota) is full"
    return text.splitlines()[0] if text else type(exc).__name__


def load_failure(exc: BaseException) -> str:
    """What went wrong in torch.load, in one line, without torch's advice to load with weights_only=False: that
    would run whatever code a hostile file carries, so lrun never passes it on."""
    text = str(exc).strip()
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds objects other than tensors and plain data, which lrun does not load"
    return text.splitlines()[0] if text else type(exc).__name__


def describe_spec(spec: dict[str, Any]) -> str:
    """A policy architecture in words, e.g. 'mlp [64, 64] tanh gaussian' or 'blend(mlp [32] ..., mlp [64] ...)'."""
    if not spec:
        return "(no architecture recorded)"
    if spec.get("kind") == "blend":
        return f"blend(frozen {describe_spec(spec['frozen'])} + {describe_spec(spec['student'])})"
    return f"mlp {list(spec['hidden_sizes'])} {spec['activation']} {spec['distribution']}"


def check_compatible(payload: dict[str, Any], path: str | Path, obs_size: int, act_size: int, spec: dict) -> None:
    """Raise `CheckpointError` if the checkpoint's policy does not fit the sizes and architecture `spec`."""
    meta = payload["meta"]
    problems = []
    if meta["obs_size"] != obs_size:
        problems.append(f"observation size {meta['obs_size']} vs {obs_size}")
    if meta["act_size"] != act_size:
        problems.append(f"action size {meta['act_size']} vs {act_size}")
    theirs = meta.get("policy_spec")
    if not problems and theirs != spec:
        if theirs is None or theirs.get("kind") != spec.get("kind"):
            problems.append(f"policy {describe_spec(theirs or {})} vs {describe_spec(spec)}")
        else:
            for key in ("hidden_sizes", "activation", "distribution"):
                if theirs.get(key) != spec.get(key):
                    problems.append(f"policy.{key} {theirs.get(key)!r} vs {spec.get(key)!r}")
            if not problems:
                problems.append(f"policy {describe_spec(theirs)} vs {describe_spec(spec)}")
    if problems:
        raise CheckpointError(f"{path}: checkpoint does not fit this config: {'; '.join(problems)}")
