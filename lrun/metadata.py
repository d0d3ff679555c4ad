"""Where and with what a run ran: software versions (lrun, its git commit and whether the tree was dirty,
Python, torch, numpy, h5py, OpenSim, mpi4py and the MPI library), the hosts of its ranks and the Slurm job.

Recorded in `config.json`, in every checkpoint and in every HDF5 rank file, so a figure can be traced back to
the code and the machine that made it.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from lrun.mpi import mpi_library, thread_level

#: Slurm's variables worth keeping (job, array task, nodes, requeues).
SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_RESTART_COUNT",
    "SLURM_CLUSTER_NAME",
)


def git_state(where: Path | None = None) -> dict[str, Any]:
    """{"commit", "dirty"} of the git checkout lrun runs from; {} for an installed copy outside git."""
    root = where or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": bool(status.strip())}


def software_versions() -> dict[str, str]:
    """Versions of lrun and what it runs on."""
    from lrun import __version__

    versions = {"lrun": __version__, "python": platform.python_version()}
    for name in ("torch", "numpy", "h5py", "opensim", "mpi4py", "gymnasium"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = ""
    versions["mpi_library"] = mpi_library()
    versions["mpi_thread_level"] = thread_level() if versions["mpi_library"] else ""
    return versions


def slurm_job() -> dict[str, str]:
    """The Slurm job this process runs in ({} outside Slurm)."""
    return {name.removeprefix("SLURM_").lower(): os.environ[name] for name in SLURM_VARIABLES if name in os.environ}


def run_metadata(hosts: list[str] | None = None) -> dict[str, Any]:
    """Everything above, with the host of every rank (world rank order) where the caller gathered them."""
    return {
        "versions": software_versions(),
        "git": git_state(),
        "hosts": hosts if hosts is not None else [socket.gethostname()],
        "slurm": slurm_job(),
    }


def flat_attributes(meta: dict[str, Any]) -> dict[str, str]:
    """The metadata as flat string attributes for an HDF5 file (versions/torch, git/commit, ...)."""
    flat: dict[str, str] = {}
    for group, values in meta.items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{group}/{key}"] = str(value)
        else:
            flat[group] = ",".join(values) if isinstance(values, list) else str(values)
    return flat
