"""Per-iteration progress: a live bar where a terminal can see it, else a line per iteration; a CSV of every
scalar (`progress.csv`); and, where the `tensorboard` package is installed, TensorBoard event files of the same
scalars (RUN_DIR/tb, step = simulated env steps)."""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from lrun.progress import PROGRESS_FILE  # the file's name lives with its reader

TENSORBOARD_DIR = "tb"
TENSORBOARD_OFF = (
    "lrun: TensorBoard logging is off (no tensorboard package: pip install -e '.[track]'); progress.csv has it all"
)
PROGRESS_MODES = ("auto", "bar", "lines")
#: Process names of MPI launchers and their proxies: a rank's output passes through them on its way to the user.
LAUNCHERS = frozenset({"mpiexec", "mpiexec.hydra", "mpirun", "hydra_pmi_proxy", "orterun", "orted", "prterun", "prted"})


def _parent_and_name(pid: int) -> tuple[int, str]:
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    name = text[text.index("(") + 1 : text.rindex(")")]
    return int(text[text.rindex(")") + 2 :].split()[1]), name


def launcher_terminal() -> str | None:
    """The terminal an MPI launcher above this process writes to, if any (Linux).

    Under MPICH's mpiexec a rank has no controlling terminal and its stdout is a pipe, even when mpiexec itself
    runs in a terminal; following the pipes up through the launcher finds that terminal. A launcher writing to a
    file or into another program (`| tee`) is not a terminal: None.
    """
    try:
        pid, name = _parent_and_name(os.getpid())
        while pid > 1:
            pid_parent, name = _parent_and_name(pid)
            if name not in LAUNCHERS:
                return None
            target = os.readlink(f"/proc/{pid}/fd/1")
            if target.startswith(("/dev/pts/", "/dev/tty")):
                return target
            if not target.startswith("pipe:"):
                return None
            pid = pid_parent
    except (OSError, ValueError, IndexError):
        return None
    return None


def format_duration(seconds: float) -> str:
    """12s, 4m05s, 2h03m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLogger:
    """Writes `progress.csv` in the run directory and prints progress (used by global rank 0 only).

    `progress`: `bar` redraws one line on a terminal (this process's stdout if it is one, else the terminal of
    the MPI launcher above it); `lines` prints a line per iteration on `stream`; `auto` picks `bar` where a
    terminal is reachable, `lines` otherwise (a log file, a batch job). Every line carries the elapsed time and
    an estimate of the time left.
    """

    def __init__(
        self,
        run_dir: str | Path,
        total_iterations: int,
        stream: TextIO | None = None,
        progress: str = "auto",
        tensorboard: bool = False,
        wandb: dict | None = None,
    ) -> None:
        """`wandb`: Weights & Biases settings (`project`, `name`, `config`) to mirror the TensorBoard scalars
        to (`sync_tensorboard`); None: off. Offline where WANDB_MODE=offline (then `wandb sync`)."""
        if progress not in PROGRESS_MODES:
            raise ValueError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {progress!r}")
        self.path = Path(run_dir) / PROGRESS_FILE
        self.total = total_iterations
        self.stream = stream or sys.stdout
        self.bar: TextIO | None = None
        self.note = ""
        if progress != "lines":
            self.bar = self._terminal()
            if self.bar is None and progress == "bar":
                self.note = "lrun: --progress bar: no terminal reachable from rank 0; printing lines instead"
        self.columns: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as handle:
                self.columns = next(csv.reader(handle), None)
        self.t0 = time.monotonic()
        self.first_iteration: int | None = None
        self.tensorboard = tensorboard
        self.board = None  # opened on the first log, after a resume has said where to purge from
        self.wandb = wandb
        self.wandb_run = None
        self.purge_step: int | None = None

    def _terminal(self) -> TextIO | None:
        if self.stream.isatty():
            return self.stream
        path = launcher_terminal() if self.stream is sys.stdout else None
        if path is None:
            return None
        try:
            return open(path, "w")  # held for the run, closed by close()
        except OSError:
            return None

    def close(self) -> None:
        """Release a terminal opened for the bar; flush and close the TensorBoard writer."""
        if self.bar is not None:
            if self.bar is not self.stream:
                self.bar.close()
            self.bar = None
        if self.board is not None:
            self.board.close()
            self.board = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def _open_board(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            self.stream.write(TENSORBOARD_OFF + "\n")
            self.tensorboard = False
            return
        if self.wandb is not None:  # before the writer: wandb patches it to mirror every scalar
            import wandb

            run_dir = self.path.parent
            self.wandb_run = wandb.init(
                project=self.wandb["project"],
                name=self.wandb.get("name", run_dir.name),
                config=self.wandb.get("config"),
                dir=str(run_dir),
                sync_tensorboard=True,
                resume="allow",
                id=self.wandb.get("id"),
            )
        # purge_step: events a killed run logged after its last checkpoint are dropped, as progress.csv's rows are
        self.board = SummaryWriter(str(self.path.parent / TENSORBOARD_DIR), purge_step=self.purge_step)

    def _write_board(self, scalars: dict[str, float]) -> None:
        step = int(scalars["env_steps"])
        try:
            for key, value in scalars.items():
                if key in ("iteration", "env_steps") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    self.board.add_scalar(key, value, global_step=step)
            self.board.flush()
        except Exception as exc:
            # TensorBoard is a copy of progress.csv: losing it must not end the run; say so once
            self.stream.write(f"lrun: TensorBoard logging stopped ({str(exc).splitlines()[0]}); progress.csv goes on\n")
            self.board = None
            self.tensorboard = False

    def truncate_after(self, iteration: int, env_steps: int | None = None) -> None:
        """Drop rows logged after `iteration` (work lost since the checkpoint a resume starts from), and
        TensorBoard events after `env_steps`."""
        if env_steps is not None:
            self.purge_step = env_steps + 1
        if not self.path.exists():
            return
        with open(self.path, newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= iteration]
        with open(self.path, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)

    def _write_row(self, scalars: dict[str, float]) -> None:
        if self.columns is None:
            self.columns = list(scalars)
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)
        new = [key for key in scalars if key not in self.columns]
        if new:
            # a column that appears later (a resumed run of an older lrun, a metric that starts mid-run): rewrite
            # the file with the wider header, earlier rows empty there, instead of dropping it
            with open(self.path, newline="") as handle:
                rows = list(csv.reader(handle))[1:]
            self.columns = [*self.columns, *new]
            tmp = self.path.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(self.columns)
                writer.writerows(row + [""] * (len(self.columns) - len(row)) for row in rows)
            os.replace(tmp, self.path)
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([scalars.get(c, "") for c in self.columns])

    def timing(self, iteration: int) -> str:
        """'elapsed 4m05s, ETA 1h02m' for this session (the ETA from this session's pace)."""
        if self.first_iteration is None:
            self.first_iteration = iteration - 1
        elapsed = time.monotonic() - self.t0
        done = iteration - self.first_iteration
        left = (self.total - iteration) * elapsed / done if done > 0 else math.nan
        return f"elapsed {format_duration(elapsed)}, ETA {format_duration(left) if math.isfinite(left) else '-'}"

    def log(self, scalars: dict[str, float]) -> None:
        """Append one row and show the iteration's summary."""
        self._write_row(scalars)
        if self.tensorboard and self.board is None:
            self._open_board()
        if self.board is not None:
            self._write_board(scalars)
        done = int(scalars["iteration"])
        line = f"{self.format(scalars)} | {self.timing(done)}"
        if self.note:
            self.stream.write(self.note + "\n")
            self.note = ""
        if self.bar is not None:
            width = 20
            filled = int(width * done / max(self.total, 1))
            line = fit_line(line, terminal_columns(self.bar) - width - 4)  # one line on the terminal, never wrapped
            self.bar.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}\x1b[K")
            if done >= self.total:
                self.bar.write("\n")
            self.bar.flush()
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def format(self, s: dict[str, float]) -> str:
        """One human line from the scalars."""

        def num(key: str, fmt: str = ".3g") -> str:
            value = s.get(key, math.nan)
            return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

        if num("losses/q_loss") != "-":  # SAC
            learner = f"q {num('losses/q_loss')} Q {num('losses/q_mean')} alpha {num('losses/alpha')}"
        elif num("losses/replay_transitions") != "-":  # SAC before its first update
            learner = f"filling the replay buffer: {num('losses/replay_transitions', '.0f')} transitions"
        else:
            learner = (
                f"pg {num('losses/policy_loss')} v {num('losses/value_loss')} kl {num('losses/approx_kl')} "
                f"clip {num('losses/clipfrac', '.2f')}"
            )
        return (
            f"iter {int(s['iteration'])}/{self.total} | steps {int(s['env_steps'])}"
            f" | {num('charts/steps_per_s', '.0f')} steps/s | return {num('charts/episodic_return')}"
            f" len {num('charts/episodic_length', '.0f')}"
            f" (episodes {int(s.get('charts/episodes', 0))}) | {learner} ent {num('losses/entropy')}"
            f" upd {num('losses/updates', '.0f')}"
            f" | sim {num('time/simulate_s', '.2f')}s comm "
            f"{num('time/communicate_s', '.2f')}s learn {num('time/learn_s', '.2f')}s"
            f" | sim idle {num('time/simulator_wait_fraction', '.0%')}"
        )


#: Parts of the progress line (" | "-separated) that give way first when the terminal is narrow, in order.
LEAST_NEEDED = ("sim idle", "sim ", "learner", "steps/s", "return")


def terminal_columns(stream: TextIO, default: int = 120) -> int:
    """Width of the terminal behind `stream` (`default` where it has none or says none)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, AttributeError, ValueError):
        return default
    return columns or default  # a pseudo-terminal whose size nobody set says 0


def fit_line(line: str, columns: int) -> str:
    """The progress line within `columns` characters: its least needed parts dropped first (LEAST_NEEDED), the
    iteration, env steps and ETA kept; cut with '~' only if that is not enough."""
    parts = line.split(" | ")

    def kind(part: str) -> str:
        if " ent " in part or part.startswith(("q ", "pg ", "filling")):
            return "learner"
        for name in LEAST_NEEDED:
            if part.startswith(name) or part.endswith(name):
                return name
        return ""

    for name in LEAST_NEEDED:
        if len(" | ".join(parts)) <= columns:
            break
        parts = [p for p in parts if kind(p) != name]
    fitted = " | ".join(parts)
    return fitted if len(fitted) <= columns else fitted[: max(columns - 1, 0)] + "~"
