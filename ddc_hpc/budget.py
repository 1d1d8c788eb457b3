"""Wall-time budgets: `run.budget` parsed, and the plan that fits each strategy into its budget.

The protocol of time-to-accuracy benchmarks (DAWNBench, MLPerf Training: every second on the
clock, evaluation included) with the schedule fitted to the budget (Li, Yumer and Ramanan,
"Budgeted training", ICLR 2020: anneal the lr to zero at the budget's end). A calibration on the
real ranks (calibration.calibrate_phase) measures what a step, an evaluation and the fixed costs take;
`plan_budget` turns those rates into step counts so that DDC (sub phase, compose, GNet-T) and
GNet-R each end annealed within their own budget. Pure arithmetic: the plan is recorded (the
out dir's plan.json, results.json's `budget`) and a resume uses the recorded plan.
"""

from __future__ import annotations

import dataclasses
import math
import re

from .strategies import NAMES, PHASES

UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
SLURM = "slurm"
# run.budget = "slurm": what the job's remaining time keeps back, so that every strategy ends before SLURM does
SLURM_OVERSHOOT = 0.10  # a strategy may run this far over its budget (measured: up to 9.3 %, benchmarks/RESULTS.md)
SLURM_SIGNAL_LEAD = 120.0  # seconds: slurm/*.sbatch's --signal=USR1@120 (the stop-and-requeue warning)
SLURM_RESULTS_SECONDS = 60.0  # results.json, metrics.csv and plots after the last strategy


def parse_budget(text: str | float) -> float | str:
    """'600', '600s', '20min', '1.5h', '1e-05', 600.0 -> seconds; 'slurm' -> 'slurm'; ValueError otherwise."""
    text = str(text).strip().lower()
    if text == SLURM:
        return SLURM
    match = re.fullmatch(r"([0-9.][0-9.e+-]*)\s*([a-z]*)", text)
    try:
        seconds = float(match.group(1)) * UNITS[match.group(2)]
    except (AttributeError, ValueError, KeyError):
        raise ValueError(f"{text!r} is not a budget: give seconds (600), a duration (\"20min\", \"1h\", \"90s\") "
                         "or \"slurm\" (the job's remaining time)") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{text!r} is not a positive, finite budget")
    return seconds


def budgets_per_strategy(spec: str, strategies: list[str], slurm_remaining: float | None) -> dict[str, float]:
    """Each strategy's seconds: the budget itself, or with "slurm" an equal share of the job's
    remaining time less what it keeps back: the templates' USR1 lead and the results' seconds,
    and each strategy's overshoot, since the strategies run one after the other."""
    value = parse_budget(spec)
    if value != SLURM:
        return dict.fromkeys(strategies, value)
    if slurm_remaining is None:
        raise ValueError("run.budget = \"slurm\" but this job has no SLURM time limit to read (not under SLURM, "
                         "or an unlimited job): give the budget in seconds instead")
    kept = SLURM_SIGNAL_LEAD + SLURM_RESULTS_SECONDS
    each = (slurm_remaining - kept) / (len(strategies) * (1 + SLURM_OVERSHOOT))
    if each <= 0:
        raise ValueError(f"the SLURM job has {slurm_remaining:.0f} s left, not more than the {kept:.0f} s a budgeted "
                         f"run keeps back ({SLURM_SIGNAL_LEAD:.0f} s before SLURM's USR1 warning, "
                         f"{SLURM_RESULTS_SECONDS:.0f} s for the results): give the job a longer --time")
    return dict.fromkeys(strategies, each)


def parse_slurm_time(text: str) -> float | None:
    """Seconds of squeue's %L ("[days-]hours:minutes:seconds", "minutes:seconds"); None for
    "UNLIMITED", "NOT_SET", "INVALID" or anything else it cannot mean."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclasses.dataclass(frozen=True)
class PhaseRates:
    """What calibration measured for one phase, in seconds."""

    step: float  # one optimizer step (sub phase: every sub-network of the busiest rank, one after the other)
    evaluation: float  # one score of the validation split, BN recalibration included
    pass_steps: int  # steps of one pass over the data (or of one configured epoch)


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """A phase's fixed length: `epochs` x `steps_per_epoch` steps, scored `evaluations` times."""

    epochs: int
    steps_per_epoch: int
    evaluations: int
    warmup_epochs: float  # in epochs of this plan
    seconds: float  # planned: steps x step time + evaluations x evaluation time

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class BudgetTooSmall(ValueError):
    """The budget does not hold the calibration and fixed costs plus one step and one evaluation."""


def evaluations(epochs: int, eval_every: int) -> int:
    """How many times a phase of `epochs` scores the network (train.evaluates_after)."""
    every = epochs // eval_every if eval_every else 0
    return every + (not eval_every or epochs % eval_every != 0)


def plan_phase(seconds: float, rates: PhaseRates, eval_every: int, warmup_passes: float) -> PhasePlan | None:
    """The most steps that fit `seconds` with their scores, in the fewest epochs of at most one
    pass each; None when not even one step and one score fit. The warm-up keeps its length in
    passes, at most half the phase."""
    def per_epoch(epochs: int) -> int:  # the steps each of `epochs` epochs gets, their scores paid
        return math.floor((seconds - evaluations(epochs, eval_every) * rates.evaluation) / (epochs * rates.step))

    low, high = 1, max(1, math.ceil(seconds / rates.step))  # per_epoch falls as epochs grow: bisect
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if per_epoch(middle) <= rates.pass_steps else (middle + 1, high)
    epochs, steps = low, per_epoch(low)
    if steps < 1:
        return None
    scored = evaluations(epochs, eval_every)
    warm = min(warmup_passes * rates.pass_steps, epochs * steps / 2)
    return PhasePlan(epochs=epochs, steps_per_epoch=steps, evaluations=scored, warmup_epochs=warm / steps,
                     seconds=epochs * steps * rates.step + scored * rates.evaluation)


def plan_budget(budgets: dict[str, float], calibration: dict[str, float], fixed: dict[str, float],
                rates: dict[str, PhaseRates], eval_every: dict[str, int], warmup: dict[str, float],
                sub_share: float) -> dict:
    """The plan of every strategy in `budgets` ("ddc", "random"), as recorded in plan.json.

    `calibration`: seconds of calibration each strategy is charged; `fixed`: what a strategy pays
    outside its phases' steps and scores (DDC: compose, GNet-T's setup and its start's BN
    recalibration and scores; GNet-R: its setup); `rates` per phase ("sub", "global", "random").
    DDC's remaining seconds go `sub_share` to the sub phase, the rest to GNet-T. A budget that
    cannot hold a phase raises BudgetTooSmall with the least budget that holds them all.
    """
    plan, short = _fit(budgets, calibration, fixed, rates, eval_every, warmup, sub_share)
    if short is not None:
        strategy, phase = short
        left = max(budgets[strategy] - calibration[strategy] - fixed[strategy], 0)
        least = least_budget(list(budgets), calibration, fixed, rates, eval_every, warmup, sub_share)
        raise BudgetTooSmall(
            f"a budget of {budgets[strategy]:g} s cannot hold {strategy}'s {phase} phase: calibration "
            f"{calibration[strategy]:.1f} s and fixed costs {fixed[strategy]:.1f} s leave {left:.1f} s, and one "
            f"{phase} step ({rates[phase].step:.2f} s) and one evaluation ({rates[phase].evaluation:.2f} s) need "
            f"more of it; give at least {least} s (at these calibrated rates every phase of every strategy fits "
            "from there on; a new calibration measures afresh, so leave some room)")
    return plan


def _fit(budgets: dict[str, float], calibration: dict[str, float], fixed: dict[str, float],
         rates: dict[str, PhaseRates], eval_every: dict[str, int], warmup: dict[str, float],
         sub_share: float) -> tuple[dict, tuple[str, str] | None]:
    """plan_budget's plan, and the first (strategy, phase) its budget cannot hold (None: all fit)."""
    plan = {"budget_seconds": budgets, "calibration_seconds": calibration, "fixed_seconds": fixed,
            "sub_share": sub_share, "rates": {k: dataclasses.asdict(v) for k, v in rates.items()}, "phases": {},
            "planned_seconds": {}}
    for strategy, budget in budgets.items():
        left = budget - calibration[strategy] - fixed[strategy]
        total = calibration[strategy] + fixed[strategy]
        for phase in PHASES[strategy]:
            planned = plan_phase(left * _share(phase, sub_share), rates[phase], eval_every[phase], warmup[phase])
            if planned is None:
                return plan, (strategy, phase)
            plan["phases"][phase] = dataclasses.asdict(planned) | {"steps": planned.steps}
            total += planned.seconds
        plan["planned_seconds"][strategy] = total
    return plan, None


def _share(phase: str, sub_share: float) -> float:
    """The part of its strategy's seconds (after calibration and fixed costs) a phase gets."""
    return {"sub": sub_share, "global": 1 - sub_share, "random": 1.0}[phase]


def least_budget(strategies: list[str], calibration: dict[str, float], fixed: dict[str, float],
                 rates: dict[str, PhaseRates], eval_every: dict[str, int], warmup: dict[str, float],
                 sub_share: float) -> int:
    """The fewest whole seconds per strategy for which plan_budget plans every phase of every
    strategy in `strategies` at these rates: each phase's share must hold one step and one score."""
    least = max(math.ceil(calibration[s] + fixed[s] + (rates[p].step + rates[p].evaluation) / _share(p, sub_share))
                for s in strategies for p in PHASES[s])
    while _fit(dict.fromkeys(strategies, float(least)), calibration, fixed, rates, eval_every, warmup,
               sub_share)[1] is not None:  # the share's float rounding may want a second more
        least += 1
    return least


def level_shares(plan: dict, levels: list[PhaseRates]) -> list[float]:
    """decompose.levels: each level's share of DDC's training seconds (the sub share split across the
    levels).  The rule: every level trains the sub phase's planned steps and scores (as sub.epochs
    applies to every level of an epoch run), so a level's share is the sub share times its part of
    the sub phase's planned seconds at its own calibrated rates (`levels`, finest first): the
    finer, narrower levels step faster and take less of it."""
    sub = plan["phases"]["sub"]
    seconds = [sub["steps"] * rate.step + sub["evaluations"] * rate.evaluation for rate in levels]
    return [plan["sub_share"] * part / sum(seconds) for part in seconds]


def phase_plan(plan: dict, phase: str) -> PhasePlan:
    """A phase's PhasePlan from a recorded plan (plan.json)."""
    fields = {f.name for f in dataclasses.fields(PhasePlan)}
    return PhasePlan(**{k: v for k, v in plan["phases"][phase].items() if k in fields})


def _auto_text(plan: dict) -> str:
    rule = plan.get("sub_share_rule")
    return "" if rule is None else (f", auto: {rule['sub_passes']:.2f} sub passes = {rule['coefficient']:.3g} x "
                                    f"budget^{rule['exponent']:.3g}, fitted to {rule['trials']}")


def _levels_text(plan: dict) -> str:
    shares = plan.get("level_shares")
    return "" if shares is None else ", per level " + " + ".join(f"{share:.3g}" for share in shares)


def describe(plan: dict) -> list[str]:
    """One line per strategy: its budget and what the plan spends it on."""
    lines = []
    for strategy, seconds in plan["budget_seconds"].items():
        parts = [f"{name} {p['steps']} steps ({p['epochs']} x {p['steps_per_epoch']}), {p['evaluations']} score(s), "
                 f"{p['seconds']:.0f} s" for name, p in plan["phases"].items()
                 if name in PHASES[strategy]]
        lines.append(f"  budget {NAMES[strategy]} {seconds:.0f} s: calibration "
                     f"{plan['calibration_seconds'][strategy]:.1f} s + fixed {plan['fixed_seconds'][strategy]:.1f} s + "
                     + " + ".join(parts) + f" = {plan['planned_seconds'][strategy]:.0f} s planned"
                     + (f" (sub share {plan['sub_share']:.3g}{_auto_text(plan)}{_levels_text(plan)})"
                        if strategy == "ddc" else ""))
    return lines


# run.sub_share = "auto": the planner gives the sub phase a number of passes over the data that
# grows as a power of the budget, P(B) = coefficient * B ** exponent, the line in log-log through
# the best-scoring share's passes at each tuning budget (least squares; exact through two), and
# turns it into the share of DDC's training time that buys those passes at the calibrated rates.
AUTO = "auto"
SHARE_RANGE = (0.05, 0.95)  # the auto share is kept inside: GNet-T and the SNets both get some time


def best_share(trials: list[dict], budget: float) -> tuple[float, list[dict]]:
    """The best DDC share at `budget` of `trials` (each: strategy, budget, seed, sub_share,
    sub_passes, tuning_accuracy) and its trials: the highest tuning accuracy, mean over its seeds;
    ties go to the smaller share."""
    shares: dict[float, list[dict]] = {}
    for t in trials:
        if t["strategy"] == "ddc" and t["budget"] == budget:
            shares.setdefault(t["sub_share"], []).append(t)
    best = max(sorted(shares), key=lambda s: sum(t["tuning_accuracy"] for t in shares[s]) / len(shares[s]))
    return best, shares[best]


def best_sub_passes(trials: list[dict]) -> list[tuple[float, float]]:
    """(budget, sub passes) of the best DDC share at each budget of `trials` (best_share): its mean
    passes over its seeds."""
    points = []
    for budget in sorted({t["budget"] for t in trials if t["strategy"] == "ddc"}):
        _, best = best_share(trials, budget)
        points.append((budget, sum(t["sub_passes"] for t in best) / len(best)))
    return points


def fit_sub_passes(points: list[tuple[float, float]]) -> dict:
    """{"coefficient", "exponent", "points"}: P(B) = coefficient * B ** exponent fitted in log-log to
    (budget, passes) points at two or more budgets; ValueError with fewer."""
    if len({b for b, _ in points}) < 2 or any(b <= 0 or p <= 0 for b, p in points):
        raise ValueError(f"the sub-share rule is fitted to the best share's passes at two or more budgets; the trials "
                         f"give {len(points)} budget(s) ({', '.join(f'{b:g} s' for b, _ in points) or 'none'}): run "
                         "DDC share trials at a second budget (python -m ddc_hpc.frontier tune)")
    x = [math.log(b) for b, _ in points]
    y = [math.log(p) for _, p in points]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    exponent = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    return {"coefficient": math.exp(my - exponent * mx), "exponent": exponent, "points": [list(p) for p in points]}


def auto_sub_share(rule: dict, budget: float, left: float, rates: PhaseRates, eval_every: int) -> tuple[float, float]:
    """(share, passes): the sub phase's share of DDC's `left` training seconds (its budget less
    calibration and fixed costs) that trains P(budget) passes with their scores at the calibrated
    `rates`, kept within SHARE_RANGE."""
    passes = rule["coefficient"] * budget ** rule["exponent"]
    steps = passes * rates.pass_steps
    seconds = steps * rates.step + evaluations(max(1, math.ceil(passes)), eval_every) * rates.evaluation
    return min(max(seconds / left, SHARE_RANGE[0]), SHARE_RANGE[1]) if left > 0 else SHARE_RANGE[0], passes
