"""What nothing used is gone or used: the MPI engine is closed where a phase ends (its communicator
freed), the prefetch thread lives with the one benchmark that measures it, and results.json has no
sub-phase collective counter (it could only ever read 0: any such collective ends the job).

    python -m pytest tests/test_dead_code.py; mpiexec -n 2 python -m pytest --with-mpi -m mpi tests/test_dead_code.py
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO
from ddc_hpc import comm
from ddc_hpc.data import batches
from ddc_hpc.data.loader import SampleSet
from ddc_hpc.data.sources import ArrayStore
from ddc_hpc.engine import MPIDataParallel
from ddc_hpc.results import Results, ddc_sections
from ddc_hpc.phases import release


def _release_frees_the_engine():
    from mpi4py import MPI

    world = comm.init_world()
    net = nn.Linear(3, 2)
    engine = MPIDataParallel(net, world)
    private = engine._world.comm
    assert private != MPI.COMM_NULL and private != MPI.COMM_WORLD
    release(engine)
    assert private == MPI.COMM_NULL and not engine._hooks  # mpi4py's Free() leaves the handle null
    net(torch.ones(1, 3)).sum().backward()  # the bare network trains on without the engine's hooks
    release(net)  # anything else: nothing to free


def test_release_frees_the_engines_communicator():
    _release_frees_the_engine()


@pytest.mark.mpi(min_size=2)
def test_release_frees_the_engines_communicator_on_every_rank():
    _release_frees_the_engine()


def test_the_loader_benchmark_prefetches_the_same_batches_as_inline():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_loader", REPO / "benchmarks" / "bench_loader.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    x = np.random.default_rng(0).integers(0, 256, (70, 8, 8, 3), dtype=np.uint8)
    images = SampleSet(ArrayStore(x, np.arange(70) % 3, "tiny"))

    def stream():
        return batches(images, np.arange(70)[::-1], 16, mean=torch.zeros(3), augment=True,
                       generator=torch.Generator().manual_seed(0))

    inline, ahead = list(stream()), list(bench.prefetched(stream()))
    assert len(inline) == len(ahead) == 5
    assert all(torch.equal(a, b) and torch.equal(la, lb) for (a, la), (b, lb) in zip(inline, ahead))


def test_results_keep_each_ranks_reach_and_no_collective_counter():
    row = {"val_accuracy": 0.5, "train_samples": 8, "train_seconds": 1.0, "seconds": 1.0}
    info = {"histories": {0: [row]}, "seconds_sub": 1.0, "reach_per_rank": [1], "imbalance_seconds": 0.0,
            "sub_elapsed": (0.0, 1.0), "seconds": 0.1, "max_abs_error": 0.0, "max_rel_error": 0.0,
            "bytes_gathered": 4}
    trained = {"initial": None, "recalibrated": None, "init_eval_seconds": 0.0, "recalibrate_seconds": 0.0,
               "recalibrated_eval_seconds": 0.0,
               "history": [row], "seconds": 1.0, "elapsed_start": 1.0, "elapsed_end": 2.0}
    sub, _, _ = ddc_sections(info, trained, "val_accuracy", 1)
    written = Results(model="m", partitions=1, sub=sub).to_dict()["sub"]
    assert written["reach_per_rank"] == [1] and not any("collectives" in key for key in written)
