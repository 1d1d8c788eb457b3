"""run.budget's plan on the real ranks: the calibration (each phase's step and score timed with
throwaway networks), the costs it gives the planner (budget.py, pure), the plan recorded in
plan.json and results.json's budget record; and run.sub_share = "auto"'s rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from . import budget, comm
from .checkpoint import atomic_write
from .compose import compose, theorem_error
from .config import PhaseConfig
from .data import SampleSet, Splits
from .data.sources import ArrayStore
from .errors import BadInput
from .partition import level_placement, tile_shape
from .phases import Logger, _model_file, data_parallel, phase_data
from .plan import PLAN_FILE, Plan, build, checkpointed
from .train import Job, PhaseData, time_evaluation, time_steps


def share_rule(path: str) -> dict:
    """run.sub_share = "auto"'s rule, fitted to the DDC trials of the trials file at `path`."""
    file = Path(path)
    try:
        content = file.read_bytes()
        trials = json.loads(content)["trials"]
        rule = budget.fit_sub_passes(budget.best_sub_passes(trials))
    except FileNotFoundError:
        raise BadInput(f"run.sub_share_trials = {path!r} does not exist (relative paths start at {Path.cwd()}): run "
                       "the share trials first (python -m ddc_hpc.frontier tune ...), or give run.sub_share a "
                       "number") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadInput(f"run.sub_share_trials = {path!r} is not a trials file of python -m ddc_hpc.frontier tune "
                       f"({type(err).__name__}: {err})") from None
    return rule | {"trials": path, "trials_digest": "sha256:" + hashlib.sha256(content).hexdigest()[:16]}


CALIBRATION_STEPS, CALIBRATION_WARMUP = 3, 1  # timed and untimed training steps per phase
CALIBRATION_SCORED = 64  # validation samples per rank a calibration scores (the time scaled to the split)


def _calibration_data(plan: Plan) -> Splits:
    """What calibration trains on: the run's data, or in a dry run (which reads no sample) random
    samples of its shape in memory."""
    if plan.data.mean is not None:
        return plan.data
    shape, n = plan.data.train.image_shape, 2 * max(plan.config.sub.batch_size, plan.config.global_.batch_size,
                                                     plan.config.random.batch_size, 256)
    images = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = np.zeros((n, *plan.data.train.target_shape), plan.data.train.labels.dtype)
    samples = SampleSet(ArrayStore(images, labels, "calibration samples"))
    return dataclasses.replace(plan.data, train=samples, val=samples, mean=torch.zeros(shape[-1]))


def _calibration_job(plan: Plan, name: str, model: torch.nn.Module, config: PhaseConfig, data: PhaseData,
                     world: comm.World, log: Logger) -> Job:
    return Job(name=name, model=model, config=config, data=data, slot=None, seed=0, task=plan.task,
               rank=world.rank, precision=plan.config.run.precision, log=log)


def _time_compose(plan: Plan) -> float:
    """Seconds rank 0 spends composing: building the nets, composing, the Theorem 2.1 check and
    saving the composed model (throwaway sub-networks)."""
    tic = time.perf_counter()
    cfg = plan.config
    subnets = [build(cfg, plan.partitions, plan.tile_sample_shape, k).eval() for k in range(plan.partitions)]
    global_net = build(cfg, 1, plan.data.train.image_shape, 0)
    compose(subnets, global_net, task=cfg.model.task, tiles=plan.tiles, input_size=plan.data.train.image_shape[:-1])
    probe = torch.zeros(min(16, max(len(plan.data.val), 1)), *plan.data.train.image_shape).movedim(-1, 1)
    theorem_error(global_net.eval(), subnets, probe, task=cfg.model.task, tiles=plan.tiles)
    torch.save(_model_file(global_net, plan), io.BytesIO())
    return time.perf_counter() - tic


def calibrate_phase(plan: Plan, world: comm.World, log: Logger) -> dict:
    """Time each phase's training step and score on the real ranks, with throwaway networks on the
    run's batches and the phase's own data parallelism, all ranks at once (so they contend for the
    cores as in the run): the rates, fixed costs and calibration seconds budget.plan_budget plans with.
    The slowest rank's figures count. Torch.distributed is shut down again before the sub phase."""
    comm.set_phase("calibrate")
    cfg = plan.config
    data = _calibration_data(plan)

    def barrier():
        comm.barrier(world, "timing the calibration")

    mine, seconds = {}, {}
    if "sub" in plan.phases:
        tic = time.perf_counter()
        for level, (count, placement) in enumerate(zip(cfg.decompose.level_counts,
                                                       level_placement(world.size, cfg.decompose.level_counts))):
            owned, tiles, key = [k for k, ranks in enumerate(placement) if world.rank in ranks], plan.level_tiles[level], \
                ("sub" if level == 0 else f"sub_l{level}")  # each level of decompose.levels (one: today's sub phase)
            local = comm.enter_sub_group(world, plan.backend, placement[owned[0]])
            model = data_parallel(build(cfg, count, tile_shape(tiles) + plan.data.train.image_shape[-1:], 0), local,
                                  plan.backend, cfg.sub.compile)
            job = _calibration_job(plan, "sub", model, cfg.sub, phase_data(plan, tiles[owned[0]], data), world, log)
            mine[f"{key}_step"] = time_steps(job, world.device, CALIBRATION_STEPS, CALIBRATION_WARMUP,
                                             barrier) * len(owned)
            recalibration, scoring = time_evaluation(job, world.device, len(plan.data.val), barrier, CALIBRATION_SCORED)
            mine[f"{key}_evaluation"] = (recalibration + scoring) * len(owned)
            comm.leave_sub_group(local)
        mine["compose"] = _time_compose(plan) if world.is_root else 0.0
        seconds["sub"] = time.perf_counter() - tic
    timed = {}  # what makes a data-parallel step cost what it does -> the phase measured with it
    for name in [phase for phase in plan.phases if phase != "sub"]:  # the data-parallel phases
        config = plan.phase(name)
        key = (config.batch_size, config.compile, config.optimizer, config.bn_recalibrate_batches)
        if key in timed:
            for what in ("step", "evaluation", "recalibration", "setup"):
                mine[f"{name}_{what}"] = mine[f"{timed[key]}_{what}"]
            continue
        tic = time.perf_counter()
        comm.init_distributed(world, plan.backend)
        model = data_parallel(build(cfg, 1, plan.data.train.image_shape, 0), world, plan.backend, config.compile)
        mine[f"{name}_setup"] = time.perf_counter() - tic
        job = _calibration_job(plan, name, model, config, phase_data(plan, None, data), world, log)
        mine[f"{name}_step"] = time_steps(job, world.device, CALIBRATION_STEPS, CALIBRATION_WARMUP, barrier)
        recalibration, scoring = time_evaluation(job, world.device, len(plan.data.val), barrier, CALIBRATION_SCORED)
        mine[f"{name}_evaluation"], mine[f"{name}_recalibration"] = recalibration + scoring, recalibration
        comm.shutdown_distributed()
        seconds[name], timed[key] = time.perf_counter() - tic, name
    mine |= {f"seconds_{k}": v for k, v in seconds.items()}
    every = comm.allgather(world, mine, "gathering the calibration")
    return {key: max(rank[key] for rank in every) for key in mine}


def _budget_costs(plan: Plan, measured: dict, world: comm.World) -> tuple[dict, dict, dict]:
    """(calibration seconds, fixed seconds, budget.PhaseRates) per strategy or phase from what
    calibrate_phase measured. GNet-T's start costs its BN recalibration and the scores of the
    composed net (none with global.eval_every = 0); a shared data-parallel calibration is charged
    to both strategies in full (each pays what it alone would)."""
    calibration, fixed, rates = {}, {}, {}
    per_group = max(world.size // plan.partitions, 1)
    if "ddc" in plan.strategies:
        glob = plan.phase("global")
        scores = 0 if glob.eval_every == 0 else ((glob.evaluate_before_recalibration or not glob.bn_recalibrate_batches)
                                                 + bool(glob.bn_recalibrate_batches))
        scoring = measured["global_evaluation"] - measured["global_recalibration"]
        calibration["ddc"] = measured["seconds_sub"] + measured.get("seconds_global", 0.0)
        fixed["ddc"] = (measured["compose"] + measured["global_setup"] + measured["global_recalibration"]
                        + scores * scoring)
        levels = [budget.PhaseRates(measured[f"{key}_step"], measured[f"{key}_evaluation"], 0)
                  for key in ["sub"] + [f"sub_l{level}" for level in range(1, len(plan.level_tiles))]]
        # decompose.levels: every level trains the sub phase's planned steps, so a sub step costs one step of
        # each level; each level above the finest scores its composed start once (a fixed cost)
        fixed["ddc"] += sum(rate.evaluation for rate in levels[1:])
        if len(levels) > 1:  # recorded with the plan, and each level's share of DDC's seconds from them
            rates |= {f"sub_level_{level}": rate for level, rate in enumerate(levels)}
    if "random" in plan.strategies:
        calibration["random"] = measured.get("seconds_random", measured.get("seconds_global", 0.0))
        fixed["random"] = measured["random_setup"]
    for phase in plan.phases:
        step, evaluation = ((sum(rate.step for rate in levels), sum(rate.evaluation for rate in levels))
                            if phase == "sub" else (measured[f"{phase}_step"], measured[f"{phase}_evaluation"]))
        rates[phase] = budget.PhaseRates(step, evaluation,
                                         plan.pass_steps(phase, per_group if phase == "sub" else world.size))
    return calibration, fixed, rates


def plan_binding(plan: Plan, world: comm.World) -> dict:
    """What a budget plan is made for: the settings that shape it (the training digest: budget, sub
    share, phases, data, model ...), the rank count it was calibrated at and the strategies it plans."""
    return {"config_digest": plan.config.digest(), "ranks": world.size, "strategies": plan.strategies}


def binding_differences(recorded: dict, current: dict) -> list[str]:
    """How the job a plan was made for (`recorded`, plan.json's `made_for`) differs from `current`."""
    names = {"config_digest": "the configuration digest", "ranks": "the rank count", "strategies": "the strategies"}
    return [f"{names[key]} {recorded.get(key)} -> {value}" for key, value in current.items()
            if recorded.get(key) != value]


def budget_phase(plan: Plan, world: comm.World, log: Logger, dry_run: bool = False, fresh_out: bool = False) -> dict:
    """run.budget's plan: the one recorded in the out dir for this very job (a resume never plans
    anew), or a new one from a calibration, written to plan.json before any training. A recorded
    plan made for another job (settings, rank count, strategies) is made anew while nothing has
    trained, and refused (exit 2, the difference named) once something has. A budget too small for
    the calibration, the fixed costs and one step of each phase stops the job with exit 2, and
    removes the out dir when this run made it (`fresh_out`)."""
    recorded, refusal, binding = None, None, plan_binding(plan, world)
    if world.is_root and (plan.out / PLAN_FILE).exists():
        recorded = json.loads((plan.out / PLAN_FILE).read_text())
        differences = binding_differences(recorded.get("made_for", {}), binding)
        if differences and checkpointed(plan):
            refusal = (f"{plan.out / PLAN_FILE} holds a budget plan made for another job ({'; '.join(differences)}) "
                       "and the run has checkpoints trained to it: a plan is never changed under a run that "
                       "has started. Rerun with the settings it was made for, or choose a new --out")
        elif differences:
            log(f"[budget] the recorded plan was made for another job ({'; '.join(differences)}) and nothing has "
                "trained yet: planning anew")
            recorded = None
    recorded, refusal = comm.bcast(world, (recorded, refusal), "reading the recorded budget plan")
    if refusal is not None:
        raise comm.collective_error(refusal)
    if recorded is not None:
        plan.clock.resume_at(recorded["calibration_end"])
        log(f"[budget] the recorded plan ({plan.out / PLAN_FILE}); no new calibration")
        return recorded
    spec, count = budget.parse_budget(plan.config.run.budget), len(plan.strategies)
    # rank 0 alone asks squeue (before calibrating) and plans; the plan reaches the others
    left = budget.parse_slurm_time(comm.slurm_time_left() or "") if spec == budget.SLURM and world.is_root else None
    each = f"{spec:g} s" if spec != budget.SLURM else "an equal share of the SLURM job's time left"
    log(f"[budget] this job takes {count} strateg{'ies' if count > 1 else 'y'} x {each}"
        + (", one after the other," if count > 1 else "") + " + start-up"
        + ("; this dry run calibrates too (on the real ranks, as the run will) and plans, trains nothing: the run "
           "calibrates afresh and may plan a little differently" if dry_run else ""))
    log(f"[budget] calibrating: {CALIBRATION_WARMUP} + {CALIBRATION_STEPS} steps and one score per phase "
        "(on the clock, charged to the budgets)")
    measured = calibrate_phase(plan, world, log)
    made, error = None, None
    if world.is_root:
        calibration, fixed, rates = _budget_costs(plan, measured, world)
        try:
            budgets = budget.budgets_per_strategy(plan.config.run.budget, plan.strategies, left)
            share, chosen = plan.config.run.sub_share, {}
            if plan.share_rule is not None and "ddc" in budgets:
                share, passes = budget.auto_sub_share(
                    plan.share_rule, budgets["ddc"], budgets["ddc"] - calibration["ddc"] - fixed["ddc"], rates["sub"],
                    plan.phase("sub").eval_every)
                chosen = {"sub_share_rule": plan.share_rule | {"sub_passes": passes}}
            made = budget.plan_budget(budgets, calibration, fixed, rates,
                                      {n: plan.phase(n).eval_every for n in plan.phases},
                                      {n: plan.phase(n).warmup_epochs for n in plan.phases}, share)
            if len(plan.level_tiles) > 1:
                made["level_shares"] = budget.level_shares(made, [rates[f"sub_level_{level}"]
                                                                  for level in range(len(plan.level_tiles))])
            made |= chosen | {"spec": plan.config.run.budget, "measured": measured, "calibration_end": plan.clock(),
                              "made_for": binding}
        except ValueError as err:
            error = f"run.budget = {plan.config.run.budget!r}: {err}"
            if fresh_out and not dry_run:  # nothing of this run is worth keeping: its folder goes too
                shutil.rmtree(plan.out, ignore_errors=True)
                error += f" ({plan.out}, made by this run, is removed again)"
    made, error = comm.bcast(world, (made, error), "sharing the budget plan")
    if error is not None:
        raise comm.collective_error(error)
    if world.is_root and not dry_run:
        atomic_write(plan.out / PLAN_FILE, json.dumps(made, indent=1).encode())
    return made


def budget_record(made: dict, elapsed: dict[str, float]) -> dict:
    """results.json's `budget`: the plan, each strategy's real seconds (its calibration charge plus
    its phases on the job clock, evaluation included) and how far it landed from its budget."""
    spent = {s: made["calibration_seconds"][s] + seconds for s, seconds in elapsed.items()}
    return made | {"elapsed_seconds": spent,
                   "landed": {s: spent[s] / made["budget_seconds"][s] for s in spent}}
