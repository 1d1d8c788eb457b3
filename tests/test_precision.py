"""run.precision (issue 12, item 6): autocast for forward and loss, fp32 parameters, optimizer
state, composition and Gatherv; bf16 runs on the CPU, so it is tested here end to end."""

from __future__ import annotations

import pytest
import torch

from conftest import results, run_pipeline_here
from ddc_hpc import build_model
from ddc_hpc.compose import compose, theorem_error
from ddc_hpc.config import PhaseConfig
from ddc_hpc.data import load_dataset
from ddc_hpc.train import Job, PhaseData, fit, to_device

CPU = torch.device("cpu")


def _job(precision: str) -> Job:
    data = load_dataset("synthetic:n=96", num_classes=10, val_fraction=0.25, seed=0)
    torch.manual_seed(0)
    model = build_model("cifar_resnet20", 10, width=8)
    return Job(name="sub_0", model=model, config=PhaseConfig(epochs=1, batch_size=32), slot=None, seed=0,
               data=PhaseData(train=data.train, val=data.val, mean=data.mean), precision=precision,
               log=lambda _: None)


def test_fit_under_bf16_autocasts_the_forward_and_keeps_fp32_state(monkeypatch):
    job = _job("bf16")
    seen = []
    job.model.fc.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    optimizers = []
    real = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **k: optimizers.append(real(*a, **k)) or optimizers[-1])
    history = fit(job, CPU)
    assert set(seen) == {torch.bfloat16}, "forward passes (training and evaluation) run under bf16 autocast"
    assert all(p.dtype == torch.float32 for p in job.model.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in job.model.buffers())
    state = [t for s in optimizers[0].state.values() for t in s.values() if t.is_floating_point() and t.ndim]
    assert state and all(t.dtype == torch.float32 for t in state), "Adam's moments stay fp32"
    assert torch.isfinite(torch.tensor(history[-1]["loss"]))


def test_fp32_fit_does_not_autocast():
    job = _job("fp32")
    seen = []
    job.model.fc.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    fit(job, CPU)
    assert set(seen) == {torch.float32}


def test_theorem_check_runs_in_fp32_even_inside_a_caller_autocast():
    torch.manual_seed(0)
    subnets = [build_model("cifar_resnet20", 10, partitions=4, width=8).eval() for _ in range(4)]
    global_net = compose(subnets, build_model("cifar_resnet20", 10, width=8)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        error = theorem_error(global_net, subnets, x)
    assert error["max_rel"] < 1e-5, error  # bf16 rounding alone would be ~1e-2


def test_batches_stay_contiguous_nchw_on_the_cpu():
    """channels_last only on CUDA: oneDNN's narrow channels_last convolutions corrupt the heap."""
    x = to_device(torch.zeros(2, 3, 8, 8), CPU)
    assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.ranks(2)
def test_pipeline_in_bf16_at_two_ranks(mpi_tmp_path):
    out = mpi_tmp_path / "run"
    done = run_pipeline_here(out, "run.precision=bf16", "run.strategy=ddc")
    assert done.returncode == 0, done.stderr[-3000:]
    r = results(out)
    assert r["precision"] == "bf16"
    assert r["compose"]["max_rel_error"] <= 1e-4, "composition and the Theorem 2.1 check stay fp32"
    assert r["global"]["epochs"] == 1 and 0.0 <= r["global"]["val_accuracy"] <= 1.0
    saved = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    assert all(t.dtype in (torch.float32, torch.int64) for t in saved.values())
    assert "precision bf16" in done.stdout
