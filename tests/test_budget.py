"""Wall-time budgets: parsing run.budget and the planner's arithmetic (pure, no MPI), and the
composition levers the frontier measures (Adam moments composed like the weights, shrink and
perturb). The planner inside real runs at 1, 2 and 4 ranks: tests/test_budget_pipeline.py."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddc_hpc import build_model, compose
from ddc_hpc.budget import (PHASES, SLURM_RESULTS_SECONDS, SLURM_SIGNAL_LEAD, BudgetTooSmall, PhaseRates,
                            budgets_per_strategy, evaluations, least_budget, parse_budget, parse_slurm_time,
                            phase_plan, plan_budget, plan_phase)
from ddc_hpc.compose import shrink_perturb, with_parameters
from ddc_hpc.config import PhaseConfig, load_config
from ddc_hpc.errors import BadInput
from ddc_hpc.train import evaluates_after, lr_at


@pytest.mark.parametrize("text, seconds", [("600", 600), ("600s", 600), ("20min", 1200), ("1h", 3600),
                                           ("1.5h", 5400), (" 90 s", 90), ("1e3", 1000), ("SLURM", "slurm"),
                                           ("1e-05", 1e-05), (1e-05, 1e-05), (2.5e-3, 0.0025), ("1E+2s", 100),
                                           (".5h", 1800)])
def test_budgets_are_seconds_durations_or_slurm(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "abc", "5x", "inf", "nan", "1e400", "1e-",
                                  "5-3", "1e-400", "--1", "e5"])
def test_a_budget_that_is_not_a_positive_duration_is_refused(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


@pytest.mark.parametrize("value", ["0", "-1", "20 minutes please", "nan"])
def test_a_bad_run_budget_is_bad_input_before_any_work(value):
    with pytest.raises(BadInput, match="run.budget"):
        load_config(None, [f"run.budget={value}", "sub.schedule=linear", "global.schedule=linear",
                           "random.schedule=linear"])


def test_a_budget_needs_schedules_that_anneal():
    with pytest.raises(BadInput, match='global.schedule = "step"'):
        load_config(None, ["run.budget=600", "sub.schedule=linear", "random.schedule=cosine"])
    config = load_config(None, ["run.budget=600", "sub.schedule=linear", "global.schedule=linear",
                                "random.schedule=cosine", "sub.epochs=0"])  # epochs are the plan's
    assert config.run.budget == 600
    assert load_config(None, ["run.budget=10min", "run.strategy=random", "random.schedule=linear"]).run.budget == "10min"


@pytest.mark.parametrize("override, message", [
    ("run.sub_share=1", "run.sub_share"), ("run.sub_share=0", "run.sub_share"),
    ("global.shrink=0", "global.shrink"), ("global.shrink=1.5", "global.shrink"), ("global.perturb=-0.1", "global.perturb"),
    ("sub.shrink=0.5", r"sub.shrink is a \[global\] setting"), ("random.carry_optimizer=true", r"\[global\] setting"),
    ("global.eval_every=-1", "global.eval_every"),
    ("global.carry_optimizer=true", "needs sub.optimizer and global.optimizer"),
])
def test_budget_and_composition_keys_are_checked(override, message):
    extra = ["global.optimizer=sgd"] if "carry" in override and "global" in override else []
    with pytest.raises(BadInput, match=message):
        load_config(None, [override, *extra])


def test_slurm_time_left_is_read_from_squeue_and_shared_by_the_strategies():
    assert parse_slurm_time("1-02:03:04") == ((26 * 60) + 3) * 60 + 4
    assert parse_slurm_time("05:00") == 300
    assert parse_slurm_time("1:00:00") == 3600
    assert parse_slurm_time("UNLIMITED") is None and parse_slurm_time("INVALID") is None
    for left in (300.0, 600.0, 3600.0, 86400.0):
        for strategies in (["ddc"], ["random"], ["ddc", "random"]):
            each = budgets_per_strategy("slurm", strategies, left)
            assert set(each) == set(strategies) and len(set(each.values())) == 1
            # every strategy landing at the most overshoot measured (9.3 %), one after the other, and the
            # results still end before SLURM's USR1 warning (the templates' --signal=USR1@120)
            worst = sum(seconds * 1.093 for seconds in each.values())
            assert worst + SLURM_RESULTS_SECONDS <= left - SLURM_SIGNAL_LEAD
            assert worst > 0.8 * (left - SLURM_SIGNAL_LEAD - SLURM_RESULTS_SECONDS)  # and not much more is kept
    assert budgets_per_strategy("10min", ["ddc", "random"], None) == {"ddc": 600, "random": 600}
    with pytest.raises(ValueError, match="no SLURM time limit"):
        budgets_per_strategy("slurm", ["ddc"], None)
    with pytest.raises(ValueError, match="not more than the 180 s"):
        budgets_per_strategy("slurm", ["ddc"], 170)


@pytest.mark.parametrize("epochs, every", [(1, 0), (5, 0), (5, 1), (5, 2), (6, 3), (7, 3), (2, 5)])
def test_the_planned_number_of_scores_is_the_number_fit_makes(epochs, every):
    config = PhaseConfig(epochs=epochs, eval_every=every)
    assert evaluations(epochs, every) == sum(evaluates_after(config, e) for e in range(epochs))


@pytest.mark.parametrize("seconds", [5.0, 37.0, 120.0, 1000.0])
@pytest.mark.parametrize("rates", [PhaseRates(0.5, 3.0, 40), PhaseRates(0.03, 0.2, 7), PhaseRates(2.0, 10.0, 1000)])
@pytest.mark.parametrize("every", [0, 1, 2])
def test_a_planned_phase_fits_its_seconds_and_one_more_step_would_not(seconds, rates, every):
    plan = plan_phase(seconds, rates, every, warmup_passes=0.1)
    if plan is None:
        assert seconds < rates.step + rates.evaluation
        return
    cost = plan.steps * rates.step + plan.evaluations * rates.evaluation
    assert plan.seconds == pytest.approx(cost) and cost <= seconds
    assert plan.evaluations == evaluations(plan.epochs, every)
    assert cost + plan.epochs * rates.step > seconds  # one more step an epoch would not fit
    assert plan.steps_per_epoch <= rates.pass_steps  # an epoch is at most one pass over the data ...
    fewer = plan_phase(seconds, PhaseRates(rates.step, rates.evaluation, 10**9), every, 0.0)
    assert plan.epochs == 1 or fewer.steps_per_epoch > rates.pass_steps  # ... in as few epochs as that allows
    assert 0 <= plan.warmup_epochs * plan.steps_per_epoch <= plan.steps / 2


def test_the_plan_anneals_the_lr_to_zero_at_its_last_step():
    plan = plan_phase(100.0, PhaseRates(0.3, 2.0, 50), 0, warmup_passes=0.2)
    for schedule in ("linear", "cosine"):
        config = PhaseConfig(epochs=plan.epochs, steps_per_epoch=plan.steps_per_epoch, schedule=schedule, lr=1e-3,
                             warmup_epochs=plan.warmup_epochs)
        lrs = [lr_at(config, e, s, plan.steps_per_epoch) for e in range(plan.epochs) for s in range(plan.steps_per_epoch)]
        assert len(lrs) == plan.steps and lrs[-1] == pytest.approx(0.0, abs=1e-18)
        assert max(lrs) == pytest.approx(1e-3) and lrs[0] < 1e-3  # warmed up, then decayed


@settings(max_examples=200, deadline=None, database=None)
@given(steps=st.integers(1, 60), pass_steps=st.integers(1, 25), warmup=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0]),
       schedule=st.sampled_from(["linear", "cosine"]))
def test_every_plan_ends_at_lr_zero_from_one_step_up(steps, pass_steps, warmup, schedule):
    """Plans of 1, 2, 3 ... steps, with and without warm-up (capped at half the phase by the planner):
    the last step is at lr 0 and no step is above the configured lr."""
    rates = PhaseRates(1.0, 0.0, pass_steps)
    plan = plan_phase(steps * rates.step, rates, 0, warmup_passes=warmup)
    config = PhaseConfig(epochs=plan.epochs, steps_per_epoch=plan.steps_per_epoch, schedule=schedule, lr=0.1,
                         warmup_epochs=plan.warmup_epochs)
    lrs = [lr_at(config, e, s, plan.steps_per_epoch) for e in range(plan.epochs) for s in range(plan.steps_per_epoch)]
    assert len(lrs) == plan.steps >= min(steps, pass_steps)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-18) and all(0 <= lr <= 0.1 + 1e-15 for lr in lrs)
    assert plan.steps < 3 or max(lrs) == pytest.approx(0.1)  # reaches the configured lr before it decays


RATES = {"sub": PhaseRates(0.1, 1.0, 100), "global": PhaseRates(1.0, 5.0, 100), "random": PhaseRates(1.0, 5.0, 100)}


def test_each_strategy_is_planned_within_its_own_budget():
    plan = plan_budget({"ddc": 300.0, "random": 300.0}, {"ddc": 12.0, "random": 8.0}, {"ddc": 9.0, "random": 1.0},
                       RATES, {"sub": 0, "global": 0, "random": 1}, {"sub": 0.0, "global": 0.0, "random": 0.0}, 0.25)
    for strategy, phases in (("ddc", ("sub", "global")), ("random", ("random",))):
        spent = plan["calibration_seconds"][strategy] + plan["fixed_seconds"][strategy] + sum(
            plan["phases"][p]["steps"] * RATES[p].step + plan["phases"][p]["evaluations"] * RATES[p].evaluation
            for p in phases)
        assert plan["planned_seconds"][strategy] == pytest.approx(spent)
        assert 0.95 * 300 < spent <= 300
    left = 300 - 12 - 9
    assert plan["phases"]["sub"]["seconds"] <= 0.25 * left and plan["phases"]["global"]["seconds"] <= 0.75 * left
    assert plan["phases"]["random"]["evaluations"] == plan["phases"]["random"]["epochs"] == 3  # 291 steps, 100 a pass
    recorded = phase_plan(plan, "global")
    assert recorded.steps == plan["phases"]["global"]["steps"] and recorded.epochs >= 1


def test_a_budget_too_small_for_calibration_and_one_step_is_refused_with_what_it_needs():
    with pytest.raises(BudgetTooSmall, match=r"cannot hold ddc.s (sub|global) phase.*give at least \d+ s"):
        plan_budget({"ddc": 20.0}, {"ddc": 15.0}, {"ddc": 4.0}, RATES, {"sub": 0, "global": 0},
                    {"sub": 0.0, "global": 0.0}, 0.3)


@settings(max_examples=150, deadline=None, database=None)
@given(strategies=st.sampled_from([["ddc"], ["random"], ["ddc", "random"]]), share=st.floats(0.05, 0.95),
       steps=st.tuples(*[st.floats(0.01, 20.0)] * 3), scores=st.tuples(*[st.floats(0.0, 30.0)] * 3),
       start=st.tuples(*[st.floats(0.0, 60.0)] * 2), every=st.sampled_from([0, 1, 2]))
def test_the_hint_of_a_too_small_budget_plans_every_phase_when_fed_back(strategies, share, steps, scores, start, every):
    """The hint is the least budget that holds every phase of every strategy at the calibrated
    rates: fed back, it plans; a second less does not."""
    rates = {p: PhaseRates(step, score, 50) for p, step, score in zip(("sub", "global", "random"), steps, scores)}
    calibration, fixed = dict(zip(("ddc", "random"), start)), dict(zip(("ddc", "random"), start[::-1]))
    args = (calibration, fixed, rates, dict.fromkeys(rates, every), dict.fromkeys(rates, 0.1), share)
    hint = least_budget(strategies, *args)
    planned = plan_budget(dict.fromkeys(strategies, float(hint)), *args)
    assert set(planned["phases"]) == {p for s in strategies for p in PHASES[s]}
    if hint > 1:
        with pytest.raises(BudgetTooSmall) as refused:
            plan_budget(dict.fromkeys(strategies, hint - 1.0), *args)
        assert f"give at least {hint} s" in str(refused.value)


def test_composed_adam_moments_are_block_diagonal_like_the_weights():
    torch.manual_seed(0)
    subnets = [build_model("cifar_resnet20", 10, partitions=4, width=16) for _ in range(4)]
    moments = [with_parameters(net, [torch.rand_like(p) + 1 for p in net.parameters()]) for net in subnets]
    composed = compose(moments, build_model("cifar_resnet20", 10, width=16))
    name, weight = next((n, p) for n, p in composed.named_parameters() if p.dim() == 4 and n != "conv1.weight")
    block = weight.shape[0] // 4
    for k in range(4):
        sub = dict(moments[k].named_parameters())[name]
        assert torch.equal(weight[k * block:(k + 1) * block, k * sub.shape[1]:(k + 1) * sub.shape[1]], sub)
    mask = torch.block_diag(*[torch.ones(block, weight.shape[1] // 4)] * 4).bool()
    assert weight.flatten(2).sum(2)[~mask].abs().max() == 0  # nothing across blocks
    assert all(torch.equal(a, b) for a, b in zip(moments[0].buffers(), subnets[0].buffers()))  # buffers kept


def test_shrink_and_perturb_moves_weights_towards_a_fresh_initialisation():
    torch.manual_seed(0)
    net, fresh = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = [p.clone() for p in net.parameters()]
    shrink_perturb(net, fresh, 0.5, 0.1)
    for p, b, f in zip(net.parameters(), before, fresh.parameters()):
        assert torch.allclose(p, 0.5 * b + 0.1 * f)
    assert math.isclose(sum(p.numel() for p in net.parameters()), 15)


def test_gnet_t_starts_from_the_sub_networks_adam_state_composed():
    """global.carry_optimizer: what compose_phase gathers (weights, then Adam's moments in the
    network's layout) composes into a state GNet-T's own Adam loads, the step count kept."""
    from ddc_hpc.config import PhaseConfig
    from ddc_hpc.phases import _adam_steps, _composed_adam_state, _payload

    torch.manual_seed(0)
    subnets, states = [], []
    for _ in range(4):
        net = build_model("cifar_resnet20", 10, partitions=4, width=8)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(3):
            optimizer.zero_grad()
            net(torch.randn(2, 3, 16, 16)).sum().backward()
            optimizer.step()
        subnets.append(net)
        states.append(optimizer.state_dict())
    payloads = [_payload(net, [], state, carry=True) for net, state in zip(subnets, states)]
    assert [len(p) for p in payloads] == [3] * 4 and _adam_steps(states[0]) == 3
    global_net = compose(subnets, build_model("cifar_resnet20", 10, width=8))
    moments = [compose([p[i] for p in payloads], build_model("cifar_resnet20", 10, width=8)) for i in (1, 2)]
    state = _composed_adam_state(global_net, *moments, 3, PhaseConfig(lr=5e-4))
    adam = torch.optim.Adam(global_net.parameters(), lr=5e-4)
    adam.load_state_dict(state)
    assert adam.param_groups[0]["lr"] == 5e-4
    loaded = adam.state[next(global_net.parameters())]
    assert loaded["step"].item() == 3 and torch.all(loaded["exp_avg_sq"] >= 0)
    first = dict(global_net.named_parameters())["conv1.weight"]
    sub_first = states[2]["state"][0]["exp_avg"]  # sub-network 2's first layer: channels 4..5 of 8
    assert torch.equal(adam.state[first]["exp_avg"][4:6], sub_first)
