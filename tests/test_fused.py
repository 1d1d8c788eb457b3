"""benchmarks/bench_fused.py (issue 13.1): the fused update of a rank's sub-networks equals
training each alone, and the table's arithmetic."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from conftest import REPO
from ddc_hpc import build_model

spec = importlib.util.spec_from_file_location("bench_fused", REPO / "benchmarks" / "bench_fused.py")
bench_fused = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_fused)

# Fused, a convolution with per-member weights runs as one grouped convolution and the per-member
# reductions (BN statistics, weight gradients) sum in another order than alone: float32 rounding
# differences of a few ulp (1.2e-7 measured on cifar_resnet20 width 8 after 3 steps), kept small by
# Adam's normalised steps of lr = 1e-3. rtol 1e-4 / atol 1e-5 leaves two orders of margin over that
# and stays two orders under one Adam step (1e-3), so a member updated with another's gradient or
# batch, or a step missed, fails.
TOL = {"rtol": 1e-4, "atol": 1e-5}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_fused_training_equals_training_each_member_alone():
    torch.manual_seed(0)
    members = [build_model("cifar_resnet20", 10, partitions=4, width=8) for _ in range(2)]
    alone = [copy.deepcopy(m) for m in members]
    initial = [copy.deepcopy(m.state_dict()) for m in members]
    steps = [(torch.randn(2, 8, 3, 16, 16), torch.randint(0, 10, (2, 8))) for _ in range(3)]

    fused = bench_fused.Fused(members, lr=1e-3)
    for x, labels in steps:
        fused.step(x, labels)
    for g, model in enumerate(alone):
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        for x, labels in steps:
            bench_fused.sequential_step([model], [optimizer], x[g:g + 1], labels[g:g + 1])

    for g, model in enumerate(alone):
        got, want = fused.state_dict(g), model.state_dict()
        assert got.keys() == want.keys()
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, **TOL, msg=lambda m, n=name: f"member {g} {n}: {m}")
            if name.endswith("running_mean"):  # BN statistics moved under vmap, per member
                assert not torch.equal(got[name], initial[g][name])
            if name.endswith("num_batches_tracked"):
                assert int(got[name]) == len(steps)
    # the members saw different batches: the fused step did not mix them up
    assert not torch.equal(fused.state_dict(0)["bn1.running_mean"], fused.state_dict(1)["bn1.running_mean"])


def test_the_table_gives_medians_and_the_per_round_ratio():
    res = {"args": {"widths": [16], "sub_batches": [64]}, "members_per_rank": 2, "rounds": [
        {"sequential w16 b64": 0.30, "fused w16 b64": 0.20},
        {"sequential w16 b64": 0.20, "fused w16 b64": 0.25},
        {"sequential w16 b64": 0.40, "fused w16 b64": 0.20},
    ]}
    header, rule, row = bench_fused.table(res)
    assert "2 members" in header and rule.startswith("|---")
    # medians 300 ms and 200 ms; per-round ratios 1.5, 0.8, 2.0 -> median 1.5, range 0.8-2.0
    assert row == "| 16 (4/8/16) | 64 | 300.0 | 200.0 | **1.50** (0.80-2.00) |"


def test_fused_and_sequential_steps_return_each_members_loss():
    torch.manual_seed(1)
    models = [build_model("cifar_resnet20", 10, partitions=4, width=8) for _ in range(2)]
    copies = [copy.deepcopy(m) for m in models]
    x, labels = torch.randn(2, 4, 3, 16, 16), torch.randint(0, 10, (2, 4))
    seq = bench_fused.sequential_step(copies, [torch.optim.Adam(m.parameters()) for m in copies], x, labels)
    fused = bench_fused.Fused(models).step(x, labels)
    assert seq.shape == fused.shape == (2,)
    torch.testing.assert_close(fused, seq, **TOL)
