"""Shared helpers: launch the real CLI as a user would, under mpiexec for several ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A job small enough for a 2-core machine: narrow net, few images, one epoch per phase.
TINY = [
    "model.width=8", "data.limit=192", "sub.epochs=1", "global.epochs=1",
    "sub.batch_size=32", "global.batch_size=32", "random.batch_size=32", "run.threads=1",
]


def mpiexec() -> str:
    """The mpiexec beside this Python first (a venv's own MPICH, found without activating the venv),
    else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec") or "mpiexec"



@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """pytest-mpi prints its "MPI Information" block on every rank, interleaved under mpiexec:
    rank 0's is enough."""
    for plugin in config.pluginmanager.get_plugins():
        if type(plugin).__name__ == "MPIPlugin" and plugin._is_testing_mpi:
            from mpi4py import MPI

            plugin._is_testing_mpi = MPI.COMM_WORLD.Get_rank() == 0


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def launch(ranks: int, module: str, *args: str, env: dict | None = None, timeout: float = 240,
           use_mpiexec: bool | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` on `ranks` MPI ranks (plain python for one rank by default)."""
    command = [sys.executable, "-m", module, *args]
    if use_mpiexec or (use_mpiexec is None and ranks > 1):
        command = [mpiexec(), "-n", str(ranks), *command]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DDC_FAULT", "SLURM_"))}
    full_env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_pipeline(ranks: int, out: Path, *overrides: str, env=None, timeout: float = 240, extra=()):
    return launch(ranks, "ddc_hpc.run", "--out", str(out), *sets(*TINY, *overrides), *extra,
                  env=env, timeout=timeout)


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished 2-rank run (strategy both), shared by tests that only read its outputs."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    done = run_pipeline(2, out)
    assert done.returncode == 0, done.stderr + done.stdout
    return out, done


@pytest.fixture
def one_thread():
    """In-process forward passes on one thread: on a busy 2-core machine, with tiny convolutions,
    a second thread only spins (10x the CPU time)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unavailable(required_by: str, reason: str):
    """Skip a test whose facility this machine lacks; fail instead where `required_by` (an env var
    such as DDC_REQUIRE_SLURM that CI sets) is 1, so a silent skip cannot pass for a green run."""
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but {reason}", pytrace=False)
    pytest.skip(reason)
