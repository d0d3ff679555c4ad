"""`python lrun_on_a_dirty_heap.py lrun ARGS...`: lrun's command line, with MPI initialised right after freed
heap memory has been filled with non-zero bytes, as happens in a process that compiled its modules from source
(a fresh clone).

A launcher prefix for slurm/stage.sbatch's LRUN_LAUNCH in the Slurm tests: MPICH's UCX netmod publishes the bytes
that lie after its address in memory, so what the heap holds decides whether MPI_Init survives Slurm's pmi2.
"""

import sys

import lrun.mpi
from lrun.cli import main

initialise = lrun.mpi.mpi_module
kept: list[bytes] = []


def dirty_heap() -> None:
    """Chunks above pymalloc's 512 bytes come from glibc malloc: freeing every second one while keeping the
    others (so the free ones cannot merge and go back to the system) leaves them, full of letters, in malloc's
    free lists, where MPI_Init's allocations find them."""
    junk = [bytes([65 + i % 26]) * (600 + 37 * (i % 100)) for i in range(20_000)]
    kept.extend(junk[1::2])


def mpi_module_on_a_dirty_heap():
    """lrun's MPI module; the first call dirties the heap just before MPI_Init."""
    if "mpi4py.MPI" not in sys.modules:
        dirty_heap()
    return initialise()


lrun.mpi.mpi_module = mpi_module_on_a_dirty_heap
sys.exit(main(sys.argv[2:]))
