"""What the end-to-end tests share: where the installed commands are, and running them as a user would."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from lrun.launcher import find_mpiexec, launch_environment

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
BIN = Path(sys.executable).parent
LRUN = str(BIN / "lrun")
MPIEXEC = find_mpiexec()


def clean_env() -> dict[str, str]:
    """This environment without Slurm or PMI variables (tests may run inside a Slurm job)."""
    return launch_environment()


def run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command to completion, capturing its output as text."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=clean_env())


def start(command: list[str]) -> subprocess.Popen:
    """Start a command with its output piped, to read its progress while it runs."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())


def read_until(process: subprocess.Popen, prefix: str) -> None:
    """Read the process's output until a line starts with `prefix` (fails if the output ends first)."""
    for line in process.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"output ended before a line starting {prefix!r}: {process.stderr.read()[-2000:]}")


def signal_after(command: list[str], prefix: str, sig: int, timeout: int = 120) -> subprocess.CompletedProcess:
    """Start a command, send it `sig` once a line of its output starts with `prefix` (mpiexec forwards it to every
    rank), and return how it ended."""
    process = start(command)
    try:
        read_until(process, prefix)
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def sets(*items: str) -> list[str]:
    """`--set` options, one per SECTION.KEY=VALUE item."""
    return [arg for item in items for arg in ("--set", item)]


def checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file below `root`, by relative path (to show that a refused command changed nothing)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
