"""run.sub_share = "auto" (issue 31): the planner's rule on synthetic rates and trials (pure), its
keys' checks, and a dry run that plans with it."""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_pipeline_here
from ddc_hpc.budget import (SHARE_RANGE, PhaseRates, auto_sub_share, best_sub_passes, fit_sub_passes, plan_budget)
from ddc_hpc.config import load_config
from ddc_hpc.errors import BadInput


def ddc(budget, seed, share, passes, accuracy):
    return {"strategy": "ddc", "budget": budget, "seed": seed, "sub_share": share, "sub_passes": passes,
            "tuning_accuracy": accuracy}


TRIALS = [ddc(200, 0, 0.3, 0.3, 0.40), ddc(200, 1, 0.3, 0.32, 0.42), ddc(200, 0, 0.5, 0.5, 0.43),
          ddc(200, 1, 0.5, 0.52, 0.41), ddc(800, 0, 0.5, 2.9, 0.60), ddc(800, 0, 0.7, 4.1, 0.61),
          {"strategy": "random", "budget": 200, "seed": 0, "lr": 7e-4, "warmup_epochs": 0.05, "tuning_accuracy": 0.9}]


def test_the_best_share_at_each_budget_gives_the_rules_points():
    # 200 s: share 0.5 (mean 0.42) beats 0.3 (0.41); its passes' mean. 800 s: 0.7. GNet-R's trials do not count.
    assert best_sub_passes(TRIALS) == [(200, pytest.approx(0.51)), (800, pytest.approx(4.1))]
    tie = [ddc(400, 0, 0.7, 2.0, 0.5), ddc(400, 0, 0.3, 1.0, 0.5)]
    assert best_sub_passes(tie) == [(400, 1.0)]  # a tie goes to the smaller share


def test_the_rule_is_a_power_law_through_the_tuning_budgets():
    rule = fit_sub_passes([(200, 0.5), (800, 2.0)])
    assert rule["exponent"] == pytest.approx(1.0) and rule["coefficient"] == pytest.approx(0.0025)
    flat = fit_sub_passes([(200, 1.0), (400, 1.0), (800, 1.0)])
    assert flat["exponent"] == pytest.approx(0.0) and flat["coefficient"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two or more budgets"):
        fit_sub_passes([(200, 0.5), (200, 0.6)])


@pytest.mark.parametrize("budget", [200, 400, 1600])
def test_the_auto_share_buys_the_rules_passes_at_the_calibrated_rates(budget):
    rule = fit_sub_passes([(200, 0.5), (800, 2.0)])  # passes = budget / 400
    rates = {"sub": PhaseRates(step=0.2, evaluation=5.0, pass_steps=700),
             "global": PhaseRates(step=4.0, evaluation=8.0, pass_steps=350)}
    left = budget - 30 - 8
    share, passes = auto_sub_share(rule, budget, left, rates["sub"], eval_every=0)
    assert passes == pytest.approx(budget / 400)
    assert share == pytest.approx((passes * 700 * 0.2 + 5.0) / left)
    plan = plan_budget({"ddc": budget}, {"ddc": 30.0}, {"ddc": 8.0}, rates, {"sub": 0, "global": 0},
                       {"sub": 0.0, "global": 0.0}, share)
    assert plan["sub_share"] == share
    assert abs(plan["phases"]["sub"]["steps"] - passes * 700) <= math.ceil(passes)  # floor per epoch only
    assert plan["planned_seconds"]["ddc"] <= budget


def test_the_auto_share_stays_inside_its_range():
    rule = fit_sub_passes([(200, 5.0), (800, 20.0)])  # more passes than the budget holds
    rates = PhaseRates(step=0.2, evaluation=5.0, pass_steps=700)
    assert auto_sub_share(rule, 200, 160, rates, 0)[0] == SHARE_RANGE[1]
    tiny = fit_sub_passes([(200, 1e-4), (800, 4e-4)])
    assert auto_sub_share(tiny, 200, 160, rates, 0)[0] == SHARE_RANGE[0]


BUDGETED = ["run.budget=600", "sub.schedule=linear", "global.schedule=linear", "random.schedule=linear"]


@pytest.mark.parametrize("overrides, message", [
    (["run.sub_share=half"], 'run.sub_share must be a share in \\(0, 1\\) or "auto"'),
    (["run.sub_share=auto", "run.sub_share_trials=t.json"], "set run.budget too"),
    (["run.sub_share=auto", *BUDGETED], "set run.sub_share_trials"),
])
def test_the_auto_share_needs_a_budget_and_its_trials(overrides, message):
    with pytest.raises(BadInput, match=message):
        load_config(None, overrides)


@pytest.mark.ranks(1)
def test_a_run_plans_with_the_auto_share_and_refuses_missing_trials(tmp_path):
    mine = [ddc(20, 0, 0.5, 4.0, 0.5), ddc(80, 0, 0.5, 16.0, 0.5)]  # 8 passes of the tiny job's 6 steps at 40 s
    trials = tmp_path / "trials.json"
    trials.write_text(json.dumps({"trials": mine}))
    args = ("run.budget=40", "sub.schedule=linear", "global.schedule=linear", "run.strategy=ddc", "run.sub_share=auto",
            "sub.eval_every=0", "global.eval_every=0")
    done = run_pipeline_here(tmp_path / "run", *args, f"run.sub_share_trials={trials}", extra=("--dry-run",))
    assert done.returncode == 0, done.stderr + done.stdout
    rule = fit_sub_passes(best_sub_passes(mine))
    passes = rule["coefficient"] * 40 ** rule["exponent"]
    assert passes == pytest.approx(8.0)
    assert f"auto: {passes:.2f} sub passes = {rule['coefficient']:.3g} x budget^{rule['exponent']:.3g}, fitted to " \
        f"{trials}" in done.stdout, done.stdout
    missing = run_pipeline_here(tmp_path / "run", *args, f"run.sub_share_trials={tmp_path / 'none.json'}",
                                extra=("--dry-run",))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
