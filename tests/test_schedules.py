"""Learning-rate schedules (warm-up, cosine / linear decay, per-milestone factors, fixed-length
epochs) and BatchNorm recalibration: the lr of every step, and BN statistics after recalibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ddc_hpc.config import PhaseConfig, load_config
from ddc_hpc.data import load_dataset, make_batch
from ddc_hpc.errors import BadInput
from ddc_hpc.train import Job, PhaseData, batch_indices, fit, lr_at, recalibrate_bn


def lrs(config: PhaseConfig, steps: int) -> list[float]:
    return [lr_at(config, e, s, steps) for e in range(config.epochs) for s in range(steps)]


def test_per_milestone_factors_mix_tenths_and_halves():
    # the paper's GNet-T: /10 at 20 and 40, /2 at 60 (here at epochs 1, 2, 3 of 4)
    config = PhaseConfig(epochs=4, lr=1e-4, milestones=(1, 2, 3), gammas=(0.1, 0.1, 0.5))
    assert lrs(config, 2) == pytest.approx([1e-4] * 2 + [1e-5] * 2 + [1e-6] * 2 + [5e-7] * 2, rel=1e-12)


def test_without_gammas_every_milestone_uses_gamma_as_multisteplr_does():
    config = PhaseConfig(epochs=5, lr=2e-3, milestones=(2, 4), gamma=0.3)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.lr)
    torch_lr = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), gamma=config.gamma)
    expected = []
    for _ in range(config.epochs):
        expected += [optimizer.param_groups[0]["lr"]] * 3
        optimizer.step()
        torch_lr.step()
    assert lrs(config, 3) == pytest.approx(expected, rel=1e-12)


def test_linear_warm_up_then_cosine_to_zero():
    config = PhaseConfig(epochs=3, lr=1.0, schedule="cosine", warmup_epochs=0.5)  # 4 steps an epoch: 2 warm-up
    got = lrs(config, 4)
    assert got[:2] == [0.5, 1.0]
    decay = 3 * 4 - 2
    assert got[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * t / (decay - 1))) for t in range(decay)])
    assert got[-1] == pytest.approx(0, abs=1e-15) and all(a >= b for a, b in zip(got[1:], got[2:]))  # annealed


def test_linear_decay_to_zero_and_fractional_warm_up_in_steps():
    config = PhaseConfig(epochs=2, lr=2.0, schedule="linear")
    assert lrs(config, 5) == pytest.approx([2.0 * (1 - t / 9) for t in range(10)])  # zero at the last step
    warm = PhaseConfig(epochs=2, lr=1.0, schedule="linear", warmup_epochs=0.25)  # 1 of 4 steps
    assert lrs(warm, 4)[:2] == pytest.approx([1.0, 1.0])
    assert lrs(PhaseConfig(epochs=1, lr=1.0, warmup_epochs=1.0), 4) == [0.25, 0.5, 0.75, 1.0]


def test_fixed_length_epochs_continue_through_the_data():
    def order_of(npass):  # pass p visits 10 samples in its own order
        return list(np.random.default_rng(npass).permutation(10))

    seen = [i for e in range(3) for s in range(2) for i in batch_indices(order_of, 10, e, s, 3, steps_fixed=2)]
    assert seen == order_of(0) + order_of(1)[:8]  # 18 samples: 1.8 passes, none skipped or repeated early
    assert batch_indices(order_of, 10, 1, 0, 3, steps_fixed=0) == order_of(1)[:3]  # 0: an epoch is one pass


def tiny_data(n: int = 96, tile=None) -> PhaseData:
    splits = load_dataset("synthetic:n=%d,size=8" % n, num_classes=10, val_fraction=0.25, seed=0)
    return PhaseData(train=splits.train, val=splits.val, mean=splits.mean, tile=tile, augment=False)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


def test_fit_follows_the_schedule_and_the_fixed_epoch_length():
    data = tiny_data()
    config = PhaseConfig(epochs=3, batch_size=8, lr=0.1, optimizer="sgd", schedule="linear", warmup_epochs=1.0,
                         steps_per_epoch=5)
    job = Job(name="t", model=tiny_net(), config=config, data=data, slot=None, seed=0, log=lambda _: None)
    seen = []
    fit_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return fit_step(self, *args, **kwargs)

    torch.optim.SGD.step = spy
    try:
        history = fit(job, torch.device("cpu"))
    finally:
        torch.optim.SGD.step = fit_step
    assert seen == pytest.approx(lrs(config, 5))
    assert [r["train_samples"] for r in history] == [40, 40, 40]  # 5 steps of 8 from 72 samples, continuing
    assert [r["lr"] for r in history] == pytest.approx([seen[4], seen[9], seen[14]])
    assert all(0 < a < b for a, b in zip([r["elapsed"] for r in history], [r["elapsed"] for r in history][1:]))


def test_recalibrated_bn_statistics_are_the_full_image_statistics_and_weights_stay():
    data = tiny_data()
    net = tiny_net()
    net[1].running_mean.fill_(5.0)  # statistics of something else (tiles, an earlier network)
    net[1].running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert recalibrate_bn(net, data, torch.device("cpu"), batches=1, batch_size=len(data.train))
    images, _ = data.train.read(np.arange(len(data.train)))
    with torch.no_grad():
        features = net[0](make_batch(images, mean=data.mean, tile=None, augment=False, generator=None))
    assert torch.allclose(net[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(net[1].running_var, features.var(dim=(0, 2, 3), unbiased=True), rtol=1e-5)
    assert net[1].momentum == 0.1 and net.training  # restored
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())


def test_recalibration_averages_equal_batches_and_reads_the_tile():
    data = tiny_data(tile=(slice(0, 4), slice(0, 4)))
    net = tiny_net()
    recalibrate_bn(net, data, torch.device("cpu"), batches=3, batch_size=24)  # 72 samples: 3 equal batches
    images, _ = data.train.read(np.asarray(list(range(len(data.train)))))
    with torch.no_grad():
        features = net[0](make_batch(images, mean=data.mean, tile=data.tile, augment=False, generator=None))
    assert torch.allclose(net[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-6)
    assert not recalibrate_bn(nn.Linear(2, 2), data, torch.device("cpu"), 3, 24)  # no BatchNorm: nothing to do


@pytest.mark.parametrize("setting, message", [
    ("global.schedule=exp", "global.schedule = 'exp' is not one of step, cosine, linear"),
    ("global.gammas=[0.1]", "global.gammas has 1 factors for 2 milestones"),
    ("sub.gammas=[0.1, 2.0]", "sub.gammas must be in (0, 1]"),
    ("global.schedule=cosine", "global.milestones are for schedule = \"step\""),
    ("random.warmup_epochs=-1", "random.warmup_epochs must be between 0 and the phase's 8 epochs"),
    ("global.warmup_epochs=2.5", "global.warmup_epochs must be between 0 and the phase's 2 epochs"),
    ("sub.steps_per_epoch=-3", "sub.steps_per_epoch must be >= 0"),
    ("global.bn_recalibrate_batches=-1", "global.bn_recalibrate_batches must be >= 0"),
])
def test_bad_schedules_are_refused(setting, message):
    base = ["global.milestones=[1, 2]", "sub.milestones=[1, 2]"]
    with pytest.raises(BadInput) as err:
        load_config(None, [*base, setting])
    assert message in str(err.value)


def test_gnet_r_warm_up_counts_its_equal_iteration_epochs():
    assert load_config(None, ["random.warmup_epochs=8"]).random.warmup_epochs == 8  # random.epochs 0: sub + global


def test_plateau_cuts_compose_with_the_milestones(monkeypatch):
    import ddc_hpc.train as train

    def flat(*args, **kwargs):  # validation accuracy that never improves
        return {"val_loss": 1.0, "val_accuracy": 0.5, "val_top5": 0.9, "val_samples": 24}

    monkeypatch.setattr(train, "evaluate", flat)
    config = PhaseConfig(epochs=6, batch_size=24, lr=1e-3, optimizer="sgd", milestones=(1,), gamma=0.1,
                         plateau_patience=1, plateau_factor=0.5)
    job = Job(name="t", model=tiny_net(), config=config, data=tiny_data(), slot=None, seed=0, log=lambda _: None)
    history = fit(job, torch.device("cpu"))
    # cuts after epochs 3 and 5 (two flat epochs each), on top of the /10 from epoch 2 on
    assert [r["lr"] for r in history] == pytest.approx([1e-3, 1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5])
