"""The strategies a run trains and the phases each is made of, declared once: run.strategy's
choices and the config's relations, the planner (budget.py), the calibration (calibration.py) and
the pipeline (run.py, plan.py), the dry run and the reports read this table.

    run.strategy   trains             phases, in order (compose, between DDC's two, trains nothing)
    "ddc"          DDC                sub, global
    "random"       GNet-R             random
    "both"         DDC, then GNet-R   sub, global, random
"""

from __future__ import annotations

PHASES = {"ddc": ("sub", "global"), "random": ("random",)}  # a strategy -> the phases it trains
NAMES = {"ddc": "DDC", "random": "GNet-R"}  # a strategy as tables, logs and plots name it
NETWORKS = {"ddc": ("SNet", "GNet-T"), "random": ("GNet-R",)}  # the networks it trains (report.NAMES says what)
CHOICES = {"ddc": ("ddc",), "random": ("random",), "both": ("ddc", "random")}  # run.strategy -> its strategies


def phases(choice: str) -> tuple[str, ...]:
    """Every phase run.strategy = `choice` trains, in order."""
    return tuple(phase for strategy in CHOICES[choice] for phase in PHASES[strategy])
