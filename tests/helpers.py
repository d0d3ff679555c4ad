"""What the end-to-end tests share: where the installed commands are, and running them as a user would."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
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


class Started:
    """A command running in a process group of its own, its output read by two threads as it comes (so a full
    stderr pipe cannot stall it while a test waits for a line of stdout). Leaving the `with` block ends it,
    whatever the test's outcome: SIGTERM first (mpiexec forwards it and reaps its ranks, which hydra starts in
    sessions of their own, out of reach of a process-group kill), SIGKILL to the group after 10 s."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err, None), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, kept: list[str], lines: queue.Queue | None) -> None:
        for line in stream:
            kept.append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)  # the output ended

    def read_until(self, prefix: str, timeout: float = 180) -> None:
        """Wait for a line of stdout that starts with `prefix`; fail if the output ends or `timeout` seconds pass
        first (with the tail of stderr)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"no line starting {prefix!r} in {timeout} s: {self.stderr_tail()}") from None
            if line is None:
                raise AssertionError(f"output ended before a line starting {prefix!r}: {self.stderr_tail()}")
            if line.startswith(prefix):
                return

    def stderr_tail(self) -> str:
        """The last 2000 characters of stderr so far."""
        return "".join(self.err)[-2000:]

    def send_signal(self, sig: int) -> None:
        """Signal the command itself (mpiexec forwards it to every rank)."""
        self.process.send_signal(sig)

    def finish(self, timeout: float) -> subprocess.CompletedProcess:
        """Wait for the command to end (TimeoutExpired after `timeout` s) and return how it ended, all its output."""
        self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return subprocess.CompletedProcess(self.command, self.process.returncode, "".join(self.out), "".join(self.err))

    def __enter__(self) -> Started:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is not None:  # ended (and reaped: its pid may now be another's)
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def signal_after(
    command: list[str], prefix: str, sig: int, timeout: int = 120, start_timeout: int = 240
) -> subprocess.CompletedProcess:
    """Start a command, send it `sig` once a line of its output starts with `prefix` (within `start_timeout` s;
    mpiexec forwards it to every rank), and return how it ended (within `timeout` s of the signal)."""
    with Started(command) as started:
        started.read_until(prefix, start_timeout)
        started.send_signal(sig)
        return started.finish(timeout)


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
