"""Starting lrun under `mpiexec` from Python: what `lrun bench train`, `bench soak`, `bench learn` and the tests
share. The pip MPICH's `mpiexec` sits next to this Python; a site MPI's is on PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


class LauncherError(RuntimeError):
    """No `mpiexec` to launch with."""


def find_mpiexec() -> str | None:
    """`mpiexec` next to this Python (the pip MPICH), else on PATH; None if neither."""
    return shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


def lrun_command() -> str:
    """The `lrun` console script next to this Python, else on PATH."""
    lrun = Path(sys.executable).parent / "lrun"
    return str(lrun) if lrun.is_file() else (shutil.which("lrun") or "lrun")


def launch_environment() -> dict[str, str]:
    """This environment without Slurm or PMI variables: a launch from inside a Slurm job (or a rank) starts a
    world of its own instead of joining the job's."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}


def mpiexec_lrun(ranks: int, *args: str) -> list[str]:
    """The command line `mpiexec -n RANKS lrun ARGS...`; LauncherError without an mpiexec."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise LauncherError("mpiexec not found (pip install mpich, or load your site's MPI)")
    return [mpiexec, "-n", str(ranks), lrun_command(), *args]


def run_lrun(ranks: int, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run `mpiexec -n RANKS lrun ARGS...` to completion in a clean launch environment."""
    return subprocess.run(mpiexec_lrun(ranks, *args), env=launch_environment(), **kwargs)
