"""Every tensor path of a CUDA run, checked on a fake CUDA device on a machine without a GPU (issue 29).

tests/fake_cuda.py runs the toolkit's own code under torch's FakeTensorMode with the networks
built on `cuda:0`: every op propagates devices as on a GPU and a CPU tensor meeting a CUDA one
raises FakeTensorDeviceMismatchError where a GPU run would stop with "Expected all tensors to be on
the same device". One model of every family of the registry, in both precisions a GPU run uses
(bf16 autocast; fp16 with GradScaler), through: the memory-layout choice (to_cuda_layout), the
loader's pinned, non-blocking copies (to_device), forward, loss, backward, GradScaler's scale,
unscale and non-finite check, the optimizer step (SGD and Adam) and its state, BN recalibration
(combine_moments at one and several batches), evaluation and its accuracy counters (fit), the
budget calibration's timing (time_steps, time_evaluation), composition with carried Adam moments
and Theorem 2.1's check, and a checkpoint written on a CPU resumed on the GPU (and one written on
a GPU read on a CPU: a real file, not a fake).

The backward pass. The autograd engine cannot run under the fake mode on a CPU-only build: it asks
the CUDA driver for a context ("hasPrimaryContext expects a valid device index", pytorch issue
92627; tracing with make_fx goes through the same engine and fails alike). So `loss.backward()`
gives every leaf of the loss's graph (its AccumulateGrad nodes) a gradient of the leaf's own
device, dtype and layout. This is sound for finding device mistakes: the forward has already run
under the fake mode (any CPU/CUDA mix in it has raised), the engine itself never moves a gradient
to another device (it refuses a gradient whose device differs from its input's, engine.cpp
validate_outputs), and what follows the backward, which is our code and GradScaler's (unscale, the
non-finite check, the optimizer step and its state), runs for real on those fake gradients.
Values do not exist under the mode: losses, counts and accuracies read into Python are 0; the
tests check devices and that every path runs, and the CPU tests check the numbers.

    python -m pytest tests/test_fake_cuda.py
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError

from fake_cuda import CUDA, fake_cuda

from ddc_hpc.checkpoint import CheckpointSeries, load_torch
from ddc_hpc.compose import compose, theorem_error
from ddc_hpc.config import PhaseConfig
from ddc_hpc.data import make_batch
from ddc_hpc.data.loader import SampleSet
from ddc_hpc.data.sources import ArrayStore
from ddc_hpc.models import _REGISTRY, build_model, input_options
from ddc_hpc.partition import default_grid, tile_shape, tile_slices_nd
from ddc_hpc.phases import _composed_adam_state, _payload
from ddc_hpc.train import (Job, PhaseData, Task, combine_moments, fit, make_optimizer, recalibrate_bn,
                           time_evaluation, time_steps, to_cuda_layout, to_device)

# One model of every family: the stored sample shape (*spatial, channels) and K. Sizes are free
# under the fake mode (nothing is computed), so each is the smallest its layers accept.
FAMILIES = {
    "cifar_resnet20": ((16, 16, 3), 4),  # 2-D, residual, global average pooling
    "resnet18": ((64, 64, 3), 4),  # 2-D ImageNet ResNet (bottleneck-free, stride 32)
    "cnn11": ((32, 32, 3), 4),  # the paper's 10-conv net
    "vgg11": ((64, 64, 3), 4),  # flatten-FC head: tile fields
    "cnn3d": ((8, 8, 8, 1), 4),  # 3-D volumes, channels_last_3d
    "resnet3d": ((8, 8, 8, 1), 4),
    "cnn1d": ((32, 1), 4),  # 1-D signals
    "gru": ((16, 1), 4),  # recurrent
    "mlp": ((32, 1), 4),  # fully connected, reads input tiles
}
PRECISIONS = ("bf16", "fp16")  # the two a GPU run uses: autocast bf16, fp16 with GradScaler
N = 12  # samples


def _samples(shape: tuple[int, ...], regression: bool = False) -> SampleSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, *shape), dtype=np.uint8)
    labels = rng.random((N, 10), dtype=np.float32) if regression else np.arange(N, dtype=np.int64) % 10
    return SampleSet(ArrayStore(images, labels, "fake-cuda samples"))


def _tiles(shape: tuple[int, ...], K: int) -> list[tuple[slice, ...]]:
    return tile_slices_nd(shape[:-1], default_grid(K, len(shape) - 1))


def _build(name: str, shape: tuple[int, ...], partitions: int = 1, seed: int = 0) -> nn.Module:
    """As plan.build: the network for samples of `shape` (*spatial, channels), on the device in use."""
    torch.manual_seed(seed)
    return build_model(name, 10, partitions=partitions, width=8, **input_options(name, shape[:-1], shape[-1]))


def _on_cuda(name: str, shape: tuple[int, ...], partitions: int = 1) -> nn.Module:
    """What data_parallel does on a GPU: the network on cuda:0 in its CUDA layout."""
    with torch.device(CUDA):
        return to_cuda_layout(_build(name, shape, partitions))


def _job(name: str, shape, precision: str, optimizer: str, partitions: int = 1, device: torch.device = CUDA,
         **config) -> Job:
    """A training job on `device`: the global network on whole samples, or sub-network 0 on its tile."""
    samples = _samples(shape)
    tile = _tiles(shape, partitions)[0] if partitions > 1 else None
    data = PhaseData(train=samples, val=samples, mean=torch.full((shape[-1],), 0.5), tile=tile,
                     augment=len(shape) > 2)  # run's default: shifts and flips for images and volumes
    sample = tile_shape([tile]) + shape[-1:] if tile else shape
    cfg = PhaseConfig(**{"epochs": 1, "batch_size": 4, "steps_per_epoch": 2, "optimizer": optimizer,
                         "bn_recalibrate_batches": 2, **config})
    model = _on_cuda(name, sample, partitions) if device == CUDA else _build(name, sample, partitions)
    return Job(name="global", model=model, config=cfg, data=data, slot=None, seed=0, precision=precision,
               log=lambda line: None)


def _assert_on_cuda(module: nn.Module, optimizer_state: dict | None = None) -> None:
    for what, tensor in [*module.named_parameters(), *module.named_buffers()]:
        assert tensor.device == CUDA, what
    for i, state in (optimizer_state or {}).get("state", {}).items():
        for key, value in state.items():
            if key != "step":  # Adam keeps its step count on the CPU unless capturable or fused
                assert value.device == CUDA, (i, key)


def test_the_fake_device_refuses_what_a_gpu_refuses():
    """The harness itself: a CPU tensor meeting a CUDA one raises (a 0-dim CPU tensor is a scalar,
    which CUDA kernels accept), and a 'backward' fills gradients on each parameter's device."""
    with fake_cuda():
        with torch.device(CUDA):
            layer = nn.Linear(3, 2)
        with pytest.raises(FakeTensorDeviceMismatchError):
            torch.cat([torch.zeros(1), torch.zeros(1, device=CUDA)])
        with pytest.raises(FakeTensorDeviceMismatchError):
            layer(torch.zeros(4, 3))
        assert (torch.tensor(2.0) * torch.ones(2, device=CUDA)).device == CUDA
        layer(torch.zeros(4, 3, device=CUDA)).sum().backward()
        assert [p.grad.device for p in layer.parameters()] == [CUDA, CUDA]


def test_batches_reach_the_device_in_its_layout():
    """The loader's copy (train.to_device): from pinned host memory, without blocking, images in
    channels_last and volumes in channels_last_3d, labels and signals as they are."""
    with fake_cuda():
        for shape, layout in (((4, 3, 8, 8), torch.channels_last), ((4, 1, 4, 4, 4), torch.channels_last_3d),
                              ((4, 1, 32), torch.contiguous_format), ((4,), torch.contiguous_format)):
            moved = to_device(torch.zeros(shape), CUDA)
            assert moved.device == CUDA and moved.is_contiguous(memory_format=layout), shape


def test_every_family_of_the_registry_is_checked():
    assert {_REGISTRY[name].family for name in FAMILIES} == {entry.family for entry in _REGISTRY.values()}


# -- item 3's bug: BN recalibration made its counts on the CPU ----------------------------------------------

@pytest.mark.parametrize("batches", [1, 3])
def test_bn_recalibration_keeps_its_counts_on_the_device(batches):
    """Failed before the fix: _batch_moments made the count on the CPU. With one batch,
    `torch.cat([count.reshape(1), count * mean])` joined a CPU and a CUDA tensor (train.py, in
    recalibrate_bn); with several, combine_moments multiplied CPU counts with CUDA means: both
    FakeTensorDeviceMismatchError "Expected all tensors to be on the same device, but found at least
    two devices, cpu and cuda:0!"."""
    samples = _samples((8, 8, 3))
    with fake_cuda():
        with torch.device(CUDA):
            net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
        data = PhaseData(train=samples, val=samples, mean=torch.full((3,), 0.5), augment=False)
        assert recalibrate_bn(net, data, CUDA, batches, batch_size=4)
        _assert_on_cuda(net)


def test_combined_moments_stay_on_the_device_of_the_means():
    """Counts as Python numbers (the CPU tests' way) or as tensors, combined with CUDA means."""
    with fake_cuda():
        parts = [(n, torch.zeros(3, device=CUDA), torch.ones(3, device=CUDA)) for n in (4, 9)]
        for given in (parts, [(torch.tensor(float(n), device=CUDA), m, m2) for n, m, m2 in parts], parts[:1]):
            assert {t.device for t in combine_moments(given)} == {CUDA}


# -- training: every family, both precisions, SGD and Adam ------------------------------------------------

@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", FAMILIES)
def test_training_on_cuda(name, precision):
    """fit on cuda:0 as a GPU run does: the global network (bf16, SGD) or a sub-network on its tile
    (fp16 with GradScaler, Adam): layout, pinned copies, augmentation, forward, loss, backward, the
    non-finite check, the optimizer step, BN recalibration (2 batches) and evaluation."""
    shape, K = FAMILIES[name]
    optimizer, partitions = ("sgd", 1) if precision == "bf16" else ("adam", K)
    with fake_cuda():
        job = _job(name, shape, precision, optimizer, partitions)
        history = fit(job, CUDA)
        assert [row["epoch"] for row in history] == [1] and "val_accuracy" in history[0]
        _assert_on_cuda(job.module, job.optimizer_state)
        assert all(p.grad is None or p.grad.device == CUDA for p in job.module.parameters())


def test_regression_and_autoencoder_losses_on_cuda():
    """The tasks whose targets are floats (mse) or the input itself (l1): loss and MAE/RMSE sums."""
    shape = FAMILIES["mlp"][0]
    with fake_cuda():
        for name, task, samples in (("mlp", Task("regression", "mse"), _samples(shape, regression=True)),
                                    ("mlp_autoencoder", Task("autoencoder", "l1"), _samples(shape))):
            job = dataclasses.replace(_job(name, shape, "fp16", "adam"), task=task)
            job.data = dataclasses.replace(job.data, train=samples, val=samples)
            assert "val_rmse" in fit(job, CUDA)[0]
            _assert_on_cuda(job.module, job.optimizer_state)


def test_budget_calibration_times_on_cuda():
    """calibrate_phase's timing of a step (synchronised with the GPU before the clock stops) and of
    a score with its BN recalibration, on a sub-network and a global network."""
    with fake_cuda():
        for partitions in (4, 1):
            job = _job("cifar_resnet20", FAMILIES["cifar_resnet20"][0], "fp16", "adam", partitions)
            assert time_steps(job, CUDA, steps=1, warmup=1, barrier=lambda: None) >= 0
            assert min(time_evaluation(job, CUDA, val_samples=N, barrier=lambda: None, samples_per_peer=4)) >= 0


# -- composition: weights, carried Adam moments, Theorem 2.1 ----------------------------------------------

def _subnets(name: str, shape, K: int, tiles, carry: bool) -> list[list[nn.Module]]:
    """K sub-networks on cuda:0 as the sub phase hands them to compose: [network] or, with
    global.carry_optimizer, after an Adam step [network, exp_avg, exp_avg_sq] (phases._payload)."""
    sub_shape = tile_shape(tiles) + shape[-1:]
    payloads = []
    for _ in range(K):
        sub = _on_cuda(name, sub_shape, K)
        optimizer = make_optimizer(sub.parameters(), PhaseConfig(optimizer="adam"))
        if carry:
            for p in sub.parameters():
                p.grad = torch.ones_like(p)
            optimizer.step()
        payloads.append(_payload(sub.eval(), [], optimizer.state_dict(), carry))
    return payloads


@pytest.mark.parametrize("name", [*FAMILIES, "mlp_autoencoder"])
def test_composition_on_cuda(name):
    """Sub-networks on cuda:0 composed into a global network on cuda:0, and Theorem 2.1 checked on
    a CPU probe batch, as the compose phase makes it."""
    shape, K = FAMILIES.get(name, FAMILIES["mlp"])
    task = "autoencoder" if name == "mlp_autoencoder" else "classification"
    tiles = _tiles(shape, K)
    with fake_cuda():
        subnets = [p[0] for p in _subnets(name, shape, K, tiles, carry=False)]
        global_net = compose(subnets, _on_cuda(name, shape), task=task, tiles=tiles, input_size=shape[:-1]).eval()
        _assert_on_cuda(global_net)
        images, _ = _samples(shape).read(np.arange(4))
        probe = make_batch(images, mean=torch.full((shape[-1],), 0.5), tile=None, augment=False, generator=None)
        assert probe.device.type == "cpu"
        error = theorem_error(global_net, subnets, probe, task=task, tiles=tiles)
        assert set(error) == {"max_abs", "max_rel"}


def test_carried_adam_moments_on_cuda():
    """global.carry_optimizer: the sub-networks' Adam moments composed like their weights, loaded
    into GNet-T's optimizer (phases._composed_adam_state), which then steps on cuda:0."""
    shape, K = FAMILIES["cifar_resnet20"]
    tiles = _tiles(shape, K)
    with fake_cuda():
        payloads = _subnets("cifar_resnet20", shape, K, tiles, carry=True)
        global_net = compose([p[0] for p in payloads], _on_cuda("cifar_resnet20", shape))
        moments = [compose([p[i] for p in payloads], _on_cuda("cifar_resnet20", shape)) for i in (1, 2)]
        optimizer = make_optimizer(global_net.parameters(), PhaseConfig(optimizer="adam"))
        optimizer.load_state_dict(_composed_adam_state(global_net, *moments, 1, PhaseConfig(optimizer="adam")))
        for p in global_net.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
        _assert_on_cuda(global_net, optimizer.state_dict())
        assert float(optimizer.state_dict()["state"][0]["step"]) == 2  # the sub-networks' 1, then this step


# -- checkpoints: written on one device, read on the other ----------------------------------------------

def test_a_cpu_checkpoint_resumes_on_cuda(tmp_path):
    """A checkpoint written on a CPU (model, Adam state, fp16 GradScaler state) resumes a fit on
    cuda:0: load_torch maps it to the CPU, and load_state_dict puts each tensor on its parameter's
    device."""
    shape = FAMILIES["cifar_resnet20"][0]
    slot = CheckpointSeries(tmp_path, "global", "digest")
    cpu = torch.device("cpu")
    fit(dataclasses.replace(_job("cifar_resnet20", shape, "fp16", "adam", device=cpu, steps_per_epoch=1,
                                 bn_recalibrate_batches=0), slot=slot), cpu)
    resume = slot.load_latest()
    assert resume["epoch"] == 1 and resume["scaler"]["scale"] > 0
    with fake_cuda():
        job = _job("cifar_resnet20", shape, "fp16", "adam", epochs=2, steps_per_epoch=1)
        assert len(fit(job, CUDA, resume=resume)) == 2
        _assert_on_cuda(job.module, job.optimizer_state)


def test_a_gpu_checkpoint_loads_on_a_cpu(tmp_path, monkeypatch):
    """A file whose storages are tagged cuda:0, as a GPU run writes them, is read on this machine
    without a GPU: load_torch maps every tensor to the CPU (plain torch.load cannot)."""
    from ddc_hpc.checkpoint import save_torch

    net = _build("cifar_resnet20", FAMILIES["cifar_resnet20"][0])
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    save_torch({"model": net.state_dict()}, tmp_path / "gpu.pt")
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(tmp_path / "gpu.pt", weights_only=True)
    loaded = load_torch(tmp_path / "gpu.pt")["model"]
    assert all(t.device.type == "cpu" for t in loaded.values())
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
