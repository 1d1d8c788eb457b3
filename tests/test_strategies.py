"""The strategies and their phases are declared once (ddc_hpc/strategies.py), and every reader
follows that table: run.strategy's choices, the config's budget relation, the planner, its
description, the pipeline's plan (its strategies, phases and their sections) and the reports.

    python -m pytest tests/test_strategies.py
"""

from __future__ import annotations

import pytest

from ddc_hpc import budget, report, strategies
from ddc_hpc.config import RunConfig, load_config, phases as phase_sections
from ddc_hpc.errors import BadInput
from ddc_hpc.plan import Plan
from ddc_hpc.strategies import CHOICES, NAMES, NETWORKS, PHASES

EVERY_PHASE = [name for name, _, _ in phase_sections(load_config())]
RATES = budget.PhaseRates(step=0.1, evaluation=1.0, pass_steps=100)


def test_the_table_covers_every_choice_phase_and_name():
    assert CHOICES["both"] == tuple(PHASES) == tuple(NAMES) == tuple(NETWORKS)
    assert strategies.phases("both") == tuple(EVERY_PHASE) == ("sub", "global", "random")
    assert {RunConfig.__dataclass_fields__["strategy"].metadata["ddc_check"].choices} == {tuple(CHOICES)}
    assert set(report.NAMES) == {n for names in NETWORKS.values() for n in names}


@pytest.mark.parametrize("choice", list(CHOICES))
@pytest.mark.parametrize("stepped", EVERY_PHASE)
def test_a_budget_refuses_a_step_schedule_in_exactly_the_phases_its_strategy_trains(choice, stepped):
    overrides = [f"run.strategy={choice}", "run.budget=600"] + [
        f"{name}.schedule={'step' if name == stepped else 'linear'}" for name in EVERY_PHASE]
    if stepped in strategies.phases(choice):
        with pytest.raises(BadInput, match=f'{stepped}.schedule = "step"'):
            load_config(None, overrides)
    else:
        load_config(None, overrides)


@pytest.mark.parametrize("choice", list(CHOICES))
def test_the_planner_its_description_and_the_plan_follow_the_table(choice, tmp_path):
    chosen = CHOICES[choice]
    made = budget.plan_budget(dict.fromkeys(chosen, 300.0), dict.fromkeys(chosen, 5.0), dict.fromkeys(chosen, 1.0),
                              dict.fromkeys(EVERY_PHASE, RATES), dict.fromkeys(EVERY_PHASE, 0),
                              dict.fromkeys(EVERY_PHASE, 0.0), 0.3)
    assert tuple(made["phases"]) == strategies.phases(choice)
    lines = budget.describe(made)
    assert [line.split()[1] for line in lines] == [NAMES[s] for s in chosen]
    for line, strategy in zip(lines, chosen):
        assert [name for name in EVERY_PHASE if f" {name} " in line] == list(PHASES[strategy])
    config = load_config(None, [f"run.strategy={choice}", "random.epochs=5"])
    plan = Plan(config=config, out=tmp_path, data=None, tiles=[], resume=False, backend="gloo")
    assert plan.strategies == list(chosen) and plan.phases == strategies.phases(choice)
    assert [plan.phase(name).epochs for name in EVERY_PHASE] == [6, 2, 5]  # each phase's own section
