"""The comm package's process-wide state: mpi4py.MPI (imported on first use) and the current phase."""

from __future__ import annotations


class _MPIOnFirstUse:
    """Stands for mpi4py.MPI until first used, then imports it (MPI_Init) and takes its place:
    the serial tools import ddc_hpc.comm through train.py and never start MPI. Read it as
    `state.MPI`, never copied: the first use rebinds the name here."""

    def __getattr__(self, name):
        global MPI
        from mpi4py import MPI

        return getattr(MPI, name)


MPI = _MPIOnFirstUse()

_phase = "startup"


def enter_phase(name: str) -> None:
    """Record the phase; lifecycle.set_phase is the one caller (it also fires injected faults)."""
    global _phase
    _phase = name


def current_phase() -> str:
    return _phase
