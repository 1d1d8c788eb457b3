"""Issue 21 item 6: run.backend = "auto" on CUDA is NCCL even where torch has an MPI backend (which
would need a CUDA-aware MPI for the gradients); torch's MPI backend only when asked for."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from ddc_hpc.comm import resolve_backend


@pytest.mark.parametrize("mpi_available", [True, False])
def test_auto_picks_nccl_for_cuda_and_mpi_only_when_asked(monkeypatch, mpi_available):
    monkeypatch.setattr(dist, "is_mpi_available", lambda: mpi_available)
    assert resolve_backend("auto", "cuda") == "nccl"
    assert resolve_backend("auto", "cpu") == ("mpi" if mpi_available else "gloo")
    assert resolve_backend("nccl", "cuda") == "nccl" and resolve_backend("mpi4py", "cuda") == "mpi4py"
    if mpi_available:
        assert resolve_backend("mpi", "cuda") == "mpi"
