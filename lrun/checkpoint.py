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
        write_atomically(path, payload, f"{directory}: cannot write the checkpoint of iteration {iteration}")
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


def write_atomically(path: Path, payload: dict[str, Any], failure: str) -> None:
    """torch.save to a temporary file beside `path`, fsynced, then renamed over it: a crash leaves the previous
    file intact. A failed write raises CheckpointError("`failure` (reason); the previous checkpoint is intact")."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError from its writer
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{failure} ({write_failure(exc)}); the previous checkpoint is intact") from exc
    os.replace(tmp, path)


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


def collapse_student(payload: dict) -> dict | None:
    """A blend checkpoint whose coefficient reached 1: the state dict of its new network alone; else None."""
    if payload["meta"].get("policy_spec", {}).get("kind") != "blend":
        return None
    state = payload["policy"]
    if float(state["coefficient"]) != 1.0:
        return None
    return {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}


#: What a new run started from a SAC checkpoint takes of its learner's state (run.init_from carries critics,
#: targets and temperature); the optimisers' moments only serve --resume.
SAC_CARRIED = ("critic", "target", "log_alpha")
#: Parts of a checkpoint that only --resume reads.
RESUME_ONLY = ("acting_policy", "torch_rng", "numpy_rng")


def export_checkpoint(source: str | Path, target: str | Path, overwrite: bool = False) -> tuple[Path, list[str]]:
    """Write `source`'s checkpoint (a file or run directory) to `target` (a file, or a directory that gets
    checkpoint.pt) as a policy to share or ship: a finished blend (coefficient 1) becomes its new network alone,
    which acts identically; SAC critics, targets and temperature stay (a run started from it with run.init_from
    carries them); optimiser moments, random-generator states and the overlapped loop's acting copy go, so it
    cannot be resumed (meta["exported"] says so). An existing `target` is replaced only with `overwrite`.
    Returns the file written and what was done, in words."""
    source_path = resolve_checkpoint(source)
    payload = load_checkpoint(source_path)
    if "exported" in payload["meta"]:
        raise CheckpointError(f"{source_path}: already an exported checkpoint")
    target = Path(target)
    if target.is_dir() or not target.suffix:
        target = target / LATEST
    if target.resolve() == source_path.resolve():
        raise CheckpointError(f"{target}: the export would overwrite its own source; write it elsewhere")
    if target.parent.name == checkpoint_dir("").name or checkpoint_dir(target.parent).is_dir():
        # RUN/checkpoint.pt would shadow the run's own checkpoints/checkpoint.pt wherever RUN names a checkpoint
        raise CheckpointError(f"{target}: inside a run directory; export to a directory of its own (e.g. models/NAME)")
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target} exists: pass --overwrite to replace it")
    notes = []
    if target.exists() and (target.parent / "eval.json").is_file():
        notes.append(f"{target.parent / 'eval.json'} scored the checkpoint replaced: evaluate this one again")
    out = {k: v for k, v in payload.items() if k not in RESUME_ONLY}
    student = collapse_student(payload)
    meta = dict(payload["meta"])
    if student is not None:
        meta["policy_spec"] = meta["policy_spec"]["student"]
        out["policy"] = student
        notes.append("the blend's new network alone (coefficient 1: it acts as the blend did)")
    elif meta.get("policy_spec", {}).get("kind") == "blend":
        notes.append(f"the blend as it is (coefficient {float(payload['policy']['coefficient']):g}: both networks)")
    optimizer = payload.get("optimizer") or {}
    if "critic" in optimizer:
        out["optimizer"] = {name: optimizer[name] for name in SAC_CARRIED if name in optimizer}
        notes.append("SAC critics, targets and temperature kept, optimiser moments left out")
    else:
        out["optimizer"] = {}
        notes.append("optimiser state left out")
    meta["exported"] = {"from": str(source_path), "iteration": int(payload.get("iteration", 0))}
    out["meta"] = meta
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, out, f"{target}: cannot write the exported checkpoint")
    return target, notes
