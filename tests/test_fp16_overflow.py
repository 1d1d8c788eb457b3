"""fp16: a step whose loss or gradients overflow is skipped by GradScaler, counted, and is not a
failure; only a loss that stays non-finite stops the phase. fp32 stops at the first non-finite loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ddc_hpc import comm
from ddc_hpc.config import PhaseConfig
from ddc_hpc.data.loader import SampleSet
from ddc_hpc.data.sources import ArrayStore
from ddc_hpc.results import Phase
from ddc_hpc.train import NONFINITE_FP16_STEPS, Job, NonFiniteLoss, PhaseData, fit, nonfinite_streak


def test_without_loss_scaling_the_first_non_finite_loss_stops():
    assert nonfinite_streak(True, False, 0) == (0, False)
    assert nonfinite_streak(False, False, 0) == (1, True)


def test_with_loss_scaling_only_a_loss_that_stays_non_finite_stops():
    streak, stop = 0, False
    for _ in range(NONFINITE_FP16_STEPS - 1):
        streak, stop = nonfinite_streak(False, True, streak)
        assert not stop
    assert nonfinite_streak(True, True, streak) == (0, False)  # one finite step: recovered
    assert nonfinite_streak(False, True, streak) == (NONFINITE_FP16_STEPS, True)


def _job(precision: str, epochs: int = 1) -> Job:
    x = np.random.default_rng(0).integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)
    y = np.arange(48) % 3
    train = SampleSet(ArrayStore(x, y, "tiny"))
    data = PhaseData(train=train, val=train, mean=torch.full((3,), 0.5), augment=False)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return Job(name="global", model=net, config=PhaseConfig(epochs=epochs, batch_size=8, lr=1e-2), data=data,
               slot=None, seed=0, precision=precision, log=lambda _: None)


@pytest.fixture
def nan_at(monkeypatch):
    """Make the loss of the listed (epoch, step) pairs NaN (the DDC_NAN_AT hook, for several steps)."""
    def steps(*at):
        monkeypatch.setattr(comm, "nan_point", lambda job, epoch, step: (epoch, step) in at)
    return steps


def test_fp16_skips_and_counts_the_steps_gradscaler_skipped(nan_at, one_thread):
    nan_at((1, 2), (1, 3))
    history = fit(_job("fp16"), torch.device("cpu"))
    assert history[0]["skipped_steps"] == 2
    assert np.isfinite(history[0]["loss"]) and history[0]["train_samples"] == 48 - 2 * 8
    assert Phase.from_trained({"history": history, "seconds": 1.0, "elapsed_start": 0.0,
                               "elapsed_end": 1.0}).to_dict()["skipped_steps"] == 2


def test_fp16_stops_when_the_loss_stays_non_finite(nan_at, one_thread):
    nan_at(*[(e, s) for e in (1, 2, 3, 4) for s in range(1, 7)])  # every step of four 6-step epochs
    with pytest.raises(NonFiniteLoss, match=f"for {NONFINITE_FP16_STEPS} steps in a row"):
        fit(_job("fp16", epochs=4), torch.device("cpu"))


def test_fp32_stops_at_the_first_non_finite_loss(nan_at, one_thread):
    nan_at((1, 2))
    with pytest.raises(NonFiniteLoss, match="epoch 1, step 2, rank 0: the loss is nan; lower global.lr"):
        fit(_job("fp32"), torch.device("cpu"))
