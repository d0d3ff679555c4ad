"""The thin MPI layer: rank roles, and collectives that wait without burning a core.

All of lrun's MPI calls live here; communicators are always passed in explicitly. MPICH's blocking waits
busy-poll, so every wait here is a non-blocking operation polled with `Test` and a short sleep: a rank that
waits (a learner during rollouts, a simulator during the update) leaves its core to the ranks that work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from types import ModuleType

    from mpi4py import MPI

ROLLOUT_TAG = 11
#: lrun calls MPI from one thread per process (torch's worker threads never do), so it asks for FUNNELED rather
#: than mpi4py's default MULTIPLE, which some MPI libraries serve with slower, lock-protected paths.
THREAD_LEVEL = "funneled"


class LayoutError(RuntimeError):
    """The MPI world does not fit the configured rank layout."""


def slurm_pmi2_netmod(environ: Mapping[str, str], pip_mpich: bool) -> str | None:
    """The MPICH netmod lrun asks for before MPI_Init, or None to leave MPICH's choice: OFI for the pip MPICH
    started by `srun --mpi=pmi2` (SLURM_MPI_TYPE=pmi2) unless MPIR_CVAR_CH4_NETMOD is already set.

    Why: MPICH's UCX netmod publishes a fixed 4096-byte business card per node through PMI, most of it whatever
    lies in memory after the UCX address. Slurm's pmi2 plugin cannot read a put whose line outgrows its buffer,
    which happens when those bytes are not zeros (they do not compress): MPI_Init then fails or hangs on jobs
    that span nodes, depending on the heap. The OFI netmod publishes its address alone (tens of bytes).
    """
    if not pip_mpich or environ.get("SLURM_MPI_TYPE") != "pmi2" or environ.get("MPIR_CVAR_CH4_NETMOD"):
        return None
    return "ofi"


def _pip_mpich() -> bool:
    """Whether the `mpich` wheel is installed (mpi4py then loads its libmpi before any other)."""
    from importlib import metadata

    try:
        metadata.version("mpich")
    except metadata.PackageNotFoundError:
        return False
    return True


def mpi_module() -> ModuleType:
    """mpi4py's MPI module; the first call initialises MPI at lrun's thread level (`THREAD_LEVEL`), with the
    netmod `slurm_pmi2_netmod` picks."""
    import sys

    if "mpi4py.MPI" not in sys.modules:
        import mpi4py

        mpi4py.rc.thread_level = THREAD_LEVEL
        netmod = slurm_pmi2_netmod(os.environ, _pip_mpich())
        if netmod:
            os.environ["MPIR_CVAR_CH4_NETMOD"] = netmod
    from mpi4py import MPI

    return MPI


def thread_level() -> str:
    """The thread support the MPI library granted ('funneled' where it honours lrun's request)."""
    MPI = mpi_module()
    names = {
        MPI.THREAD_SINGLE: "single",
        MPI.THREAD_FUNNELED: "funneled",
        MPI.THREAD_SERIALIZED: "serialized",
        MPI.THREAD_MULTIPLE: "multiple",
    }
    return names.get(MPI.Query_thread(), str(MPI.Query_thread()))


def mpi_library() -> str:
    """The MPI library's own version line (e.g. 'MPICH Version: 5.0.2'), or '' without mpi4py."""
    try:
        MPI = mpi_module()
    except ImportError:
        return ""
    text = MPI.Get_library_version().split("\x00")[0]  # Open MPI's string carries a NUL (HDF5 refuses those)
    return " ".join(text.splitlines()[0].split()) if text.strip() else ""


def comm_world() -> MPI.Comm:
    """MPI.COMM_WORLD (the first call initialises MPI)."""
    return mpi_module().COMM_WORLD


def check_layout(
    world_size: int, learners: int, envs_per_rank: int, expected_ranks: int = 0, environ: dict[str, str] | None = None
) -> None:
    """Raise `LayoutError` with a how-to-launch message if the world cannot run this layout (no collectives)."""
    environ = os.environ if environ is None else environ
    launch = "launch with e.g. `mpiexec -n N lrun train ...` or `srun --mpi=pmi2 lrun train ...`"
    step_tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if world_size == 1 and step_tasks > 1:
        raise LayoutError(
            f"srun started {step_tasks} tasks but this one sees an MPI world of size 1: srun is not wiring the "
            "ranks together (MpiDefault=none). Use `srun --mpi=pmi2` with the pip MPICH (or --mpi=pmix / your "
            "site MPI's mpiexec)"
        )
    if expected_ranks and world_size != expected_ranks:
        raise LayoutError(f"layout.ranks={expected_ranks} but the MPI world has {world_size} ranks; {launch}")
    if envs_per_rank < 1:
        raise LayoutError("layout.envs_per_rank must be >= 1")
    if world_size == 1:
        return  # serial mode: every role in this process
    simulators = world_size - learners
    if simulators < 1:
        raise LayoutError(
            f"{world_size} ranks with layout.learners={learners} leave no simulator rank; need at least "
            f"{learners + 1} ranks; {launch}"
        )
    if simulators < learners:
        raise LayoutError(
            f"{simulators} simulator ranks cannot feed layout.learners={learners} learners (each needs at least "
            f"one); use at least {2 * learners} ranks or fewer learners"
        )


@dataclass
class RankLayout:
    """This rank's role and the ranks it talks to (world ranks: learners first, then simulators)."""

    role: str  # "serial", "learner" or "simulator"
    world_rank: int
    world_size: int
    learners: int
    learner_comm: MPI.Comm | None = None  # the learners only (None on simulators and in serial mode)
    learner_rank: int | None = None  # world rank of this simulator's learner
    simulator_ranks: list[int] = field(default_factory=list)  # a learner's simulators (world ranks)
    simulator_index: int = 0  # a simulator's index among all simulators

    @property
    def is_root(self) -> bool:
        """Global rank 0: the learner that logs, checkpoints and decides for everyone."""
        return self.world_rank == 0


def split_roles(comm: MPI.Comm, learners: int) -> RankLayout:
    """Assign roles: world ranks [0, learners) learn, the rest simulate (round-robin over learners).

    Collective over `comm` (Comm.Split) unless the world has one rank.
    """
    size, rank = comm.Get_size(), comm.Get_rank()
    if size == 1:
        return RankLayout("serial", 0, 1, 1)
    is_learner = rank < learners
    learner_comm = comm.Split(0 if is_learner else 1, rank)
    simulators = list(range(learners, size))
    if is_learner:
        mine = [s for i, s in enumerate(simulators) if i % learners == rank]
        return RankLayout("learner", rank, size, learners, learner_comm, simulator_ranks=mine)
    learner_comm.Free()
    index = rank - learners
    return RankLayout("simulator", rank, size, learners, None, learner_rank=index % learners, simulator_index=index)


@dataclass
class Waiter:
    """How a rank waits for MPI, and how long it has: polls with `sleep` seconds between them, and adds up the
    wall and CPU seconds spent waiting (CPU << wall shows the waits leave the core to others).

    One per run (`lrun train` makes its own), so a curriculum's stages each count only their own waiting.
    """

    sleep: float = 0.002
    wall_s: float = 0.0
    cpu_s: float = 0.0
    #: wall seconds per kind of operation (bcast, allreduce, send, recv_wait, recv_transfer, gradient_allreduce):
    #: what `lrun bench scaling` splits an iteration's communication into
    by_operation: dict[str, float] = field(default_factory=dict)

    #: The first sleep of a wait; each further one doubles, up to `sleep`. A collective's handshakes advance only
    #: inside tests (no progress thread), so short first sleeps let a quick operation finish in microseconds,
    #: while a long wait (a learner during rollouts) still settles at one test per `sleep`.
    first_sleep: float = 5e-5

    def _poll(self, done: Callable[[], bool], operation: str) -> float:
        start, cpu_start = time.perf_counter(), time.process_time()
        pause = min(self.first_sleep, self.sleep)
        while not done():
            time.sleep(pause)
            pause = min(2 * pause, self.sleep)
        waited = time.perf_counter() - start
        self.wall_s += waited
        self.cpu_s += time.process_time() - cpu_start
        self.count(operation, waited)
        return waited

    def wait(self, request: MPI.Request, operation: str = "other") -> float:
        """Complete a non-blocking request. Returns the seconds waited."""
        return self._poll(request.Test, operation)

    def count(self, operation: str, seconds: float) -> None:
        """Add `seconds` to an operation's total (also for blocking calls timed by the caller)."""
        self.by_operation[operation] = self.by_operation.get(operation, 0.0) + seconds

    def timed(self, operation: str, call: Callable[[np.ndarray], None]) -> Callable[[np.ndarray], None]:
        """`call` (a blocking collective on a buffer) with its wall time counted under `operation`."""

        def counted(buffer: np.ndarray) -> None:
            start = time.perf_counter()
            call(buffer)
            self.count(operation, time.perf_counter() - start)

        return counted


def bcast(comm: MPI.Comm, buffer: np.ndarray, root: int, waiter: Waiter) -> float:
    """Broadcast `buffer` in place from `root`, politely. Collective over `comm`."""
    return waiter.wait(comm.Ibcast(buffer, root=root), "bcast")


def allreduce_sum(comm: MPI.Comm, buffer: np.ndarray, waiter: Waiter) -> float:
    """Sum `buffer` in place over `comm`, politely. Collective over `comm`."""
    MPI = mpi_module()

    return waiter.wait(comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM), "allreduce")


def allreduce_mean(comm: MPI.Comm, buffer: np.ndarray) -> None:
    """Average `buffer` in place over `comm` (blocking: used where every rank is busy anyway)."""
    MPI = mpi_module()

    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
    buffer /= comm.Get_size()


def send(comm: MPI.Comm, buffer: np.ndarray, dest: int, tag: int, waiter: Waiter) -> float:
    """Send `buffer` to `dest`, politely. Returns seconds waited."""
    return waiter.wait(comm.Isend(buffer, dest=dest, tag=tag), "send")


def recv_any_size(comm: MPI.Comm, source: int, tag: int, waiter: Waiter, dtype: type = np.float32) -> np.ndarray:
    """Receive a vector of unknown length from `source`, politely (probe, then receive)."""
    MPI = mpi_module()

    status = MPI.Status()
    waiter._poll(lambda: comm.Iprobe(source=source, tag=tag, status=status), "recv_wait")  # until it is sent
    buffer = np.empty(status.Get_count(MPI._typedict[np.dtype(dtype).char]), dtype=dtype)
    start = time.perf_counter()
    comm.Recv(buffer, source=source, tag=tag)
    waiter.count("recv_transfer", time.perf_counter() - start)  # the message's own transfer
    return buffer


def check_synced(comm: MPI.Comm, flat: np.ndarray) -> bool:
    """Whether every rank of `comm` holds the same vector as rank 0. Collective over `comm`."""
    MPI = mpi_module()

    reference = flat.copy()
    comm.Bcast(reference, root=0)
    same = np.array([1 if np.array_equal(reference, flat) else 0], dtype=np.int32)
    comm.Allreduce(MPI.IN_PLACE, same, op=MPI.MIN)
    return bool(same[0])


def gather_objects(comm: MPI.Comm, obj: object) -> list[object] | None:
    """Gather small Python objects to rank 0 of `comm` (logging statistics)."""
    return comm.gather(obj, root=0)


@dataclass
class WorldReport:
    """What each rank of a world runs on (world rank order), gathered by `describe_world`."""

    hosts: list[str]
    libraries: list[str]
    thread_levels: list[str]
    mpi4py_version: str

    def ranks_per_host(self) -> dict[str, int]:
        """Host -> number of ranks on it, in order of first appearance."""
        counts: dict[str, int] = {}
        for host in self.hosts:
            counts[host] = counts.get(host, 0) + 1
        return counts

    def problems(self) -> list[str]:
        """Mismatches that make a run unreliable: ranks on different MPI libraries or thread levels."""
        found = []
        if len(set(self.libraries)) > 1:
            found.append(f"ranks run different MPI libraries: {sorted(set(self.libraries))}")
        if len(set(self.thread_levels)) > 1:
            found.append(f"ranks were granted different thread levels: {sorted(set(self.thread_levels))}")
        return found

    def lines(self) -> list[str]:
        """A short human-readable description."""
        hosts = self.ranks_per_host()
        listing = ", ".join(f"{host}: {n}" for host, n in hosts.items())
        return [
            f"MPI world: {len(self.hosts)} ranks on {len(hosts)} host{'s' if len(hosts) > 1 else ''} ({listing})",
            f"library: {self.libraries[0]}" + ("" if len(set(self.libraries)) == 1 else " (rank 0; others differ)"),
            f"thread level: {self.thread_levels[0]} (asked for {THREAD_LEVEL})",
            f"mpi4py {self.mpi4py_version}",
        ]


def describe_world(comm: MPI.Comm) -> WorldReport | None:
    """Gather every rank's host, MPI library and thread level on rank 0 (others get None). Collective."""
    import socket

    import mpi4py

    mine = (socket.gethostname(), mpi_library(), thread_level())
    every = comm.gather(mine, root=0)
    if every is None:
        return None
    hosts, libraries, levels = (list(column) for column in zip(*every))
    return WorldReport(hosts, libraries, levels, mpi4py.__version__)
