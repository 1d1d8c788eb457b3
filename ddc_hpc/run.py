"""`python -m ddc_hpc.run`: config -> World -> phases (sub, compose, global, random) -> report.

    srun -n 4 python -m ddc_hpc.run --config jobs/x.toml      # or mpiexec -n 4 ...
    python -m ddc_hpc.run                                      # one rank, the built-in quickstart

Exit codes: 0 done, 2 bad input (nothing trained, no traceback), 75 stopped by a signal with a
checkpoint written (run the same command again to resume), 1 anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import io
import json
import os
import platform
import shutil
import time
import tomllib
import typing
from pathlib import Path

import numpy as np
import torch

from . import budget, comm, report, strategies
from .checkpoint import atomic_write, existing_digests
from .compose import compose, theorem_error
from .config import RANDOM_INIT_SEED_OFFSET, Config, PhaseConfig, load_config
from .data import SampleSet, Splits, check_tiles, load_from_config, source_identity
from .data.sources import ArrayStore
from .errors import BadInput
from .levels import level_layout, multilevel_ddc
from .results import Phase, Results, ddc_sections, load_results
from .resume import choose_resume, elastic_batches, elastic_text, record_rank_count
from .models import model_defaults, model_options
from .partition import default_grid, level_placement, tile_shape, tile_slices_nd, validate_layout
from .phases import Logger, _model_file, compose_phase, data_parallel, global_phase, phase_data, sub_phase
from .plan import PLAN_FILE, Plan, build, checkpointed
from .train import Job, PhaseData, steps_per_epoch, time_evaluation, time_steps


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ddc_hpc.run", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="job TOML (default: the built-in quickstart)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, TOML syntax (e.g. --set sub.epochs=5)")
    parser.add_argument("--out", help="output directory (default: runs/<job>: the job file's name or quickstart, "
                        "plus a digest of the --set overrides, so the same command finds its run again)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for bad input too")
    return parser.parse_args(argv)


def default_out(args: argparse.Namespace) -> Path:
    """The output folder when --out is not given: runs/<job> (the job file's name, or quickstart), with
    a digest of the --set overrides when there are any. The same command always finds its own run
    again: a finished one prints its table, a stopped one resumes."""
    name = Path(args.config).stem if args.config else "quickstart"
    if args.set:
        name += "-" + hashlib.sha256("\0".join(args.set).encode()).hexdigest()[:8]
    return Path("runs") / name


def prepare(args: argparse.Namespace, ranks_per_node: int = 1) -> Plan:
    """Parse and check everything; raises BadInput before any work is done. Each of the
    `ranks_per_node` ranks of this node loads its own copy of the data."""
    config = load_config(args.config, args.set)
    if config.run.budget and budget.parse_budget(config.run.budget) == budget.SLURM and comm.slurm_job() is None:
        raise BadInput("run.budget = \"slurm\" takes its seconds from the SLURM job's time limit, but this run is "
                       "not inside a SLURM job (no SLURM_JOB_ID): give the budget in seconds (run.budget=600) or as "
                       "a duration (\"20min\"), or submit it with sbatch (docs/CLUSTER.md, 'Budgets')")
    d = config.decompose
    data = load_from_config(config, metadata_only=args.dry_run, copies_per_node=ranks_per_node)
    if not len(data.val):  # nothing to score, and the Theorem 2.1 check's probe batch comes from it
        raise BadInput(f"{config.data.source}: data.val_fraction = {config.data.val_fraction} of "
                       f"{len(data.train)} samples leaves no validation sample; raise data.val_fraction")
    spatial = data.train.image_shape[:-1]
    model_dims = model_defaults(config.model.name)["dims"]
    if "dims" not in model_options(config.model.name) and model_dims != len(spatial):
        raise BadInput(f"model {config.model.name!r} takes samples with {model_dims} spatial axes but "
                       f"{config.data.source} holds samples of shape {data.train.image_shape} ({len(spatial)} "
                       "spatial axes, channels last); images must be stored (N, H, W, C), signals (N, L, C), "
                       "volumes (N, D, H, W, C)")
    grid = d.grid or default_grid(d.partitions, len(spatial))
    if len(grid) != len(spatial):
        raise BadInput(f"decompose.grid {list(grid)} has {len(grid)} axes but the samples of {config.data.source} "
                       f"have shape {data.train.image_shape}: {len(spatial)} spatial axes and channels last "
                       "(images must be stored (N, H, W, C); give grayscale images a channel axis of 1)")
    try:
        tiles = tile_slices_nd(spatial, grid, d.overlap, d.crop)
    except ValueError as err:
        raise BadInput(f"the tile layout does not fit the {spatial} images: {err}") from None
    check_tiles(data.train.image_shape, tiles)
    side = min(tile_shape(tiles))
    if config.data.augment and config.data.max_shift > side:  # beyond a tile it only costs memory (padding)
        raise BadInput(f"data.max_shift = {config.data.max_shift} px is larger than the {side} px tiles; give a "
                       "shift of a few pixels (the paper's random shift), or data.augment = false")
    if "sub" in strategies.phases(config.run.strategy):
        try:
            validate_layout(comm.MPI.COMM_WORLD.Get_size(), d.partitions)
        except ValueError as err:
            raise BadInput(str(err)) from None
    try:  # widths must split into K sub-networks; the meta device builds without allocating
        with torch.device("meta"):
            build(config, 1, data.train.image_shape, 0)
            build(config, d.partitions, tile_shape(tiles) + data.train.image_shape[-1:], 0)
    except (ValueError, TypeError, KeyError) as err:
        raise BadInput(f"model {config.model.name!r} cannot be built as configured: {err}") from None
    levels = level_layout(config, data.train.image_shape, comm.MPI.COMM_WORLD.Get_size())
    out = Path(args.out)
    if args.dry_run:  # writes nothing: only sees whether it could
        existing = next(p for p in (out, *out.parents) if p.exists())
        if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
            raise BadInput(f"output directory {out} could not be created or written ({existing} is not a writable "
                           "folder); choose another --out")
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{comm.MPI.COMM_WORLD.Get_rank()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise BadInput(f"output directory {out} is not writable ({err.strerror}); choose another --out") from None
    digests = existing_digests(out / "checkpoints")
    if digests - {config.digest()}:
        raise BadInput(f"{out} holds checkpoints of a different configuration; use a new --out, or the "
                       f"original config (see {out / 'config.toml'}) to resume")
    if args.resume and not digests:
        raise BadInput(f"--resume: {out} holds no checkpoint to resume from")
    device = comm.device_type(config.run.device)
    backend = comm.resolve_backend(config.run.backend, device)
    if config.run.precision == "fp16" and device == "cpu":
        raise BadInput("run.precision = 'fp16' needs GPUs (its gradient scaling is for CUDA's fp16 kernels); "
                       "on CPUs use 'bf16' or 'fp32'")
    return Plan(config=config, out=out, data=data, tiles=levels[0], resume=bool(digests), backend=backend,
                level_tiles=levels,
                share_rule=share_rule(config.run.sub_share_trials) if config.run.sub_share == budget.AUTO
                and "sub" in strategies.phases(config.run.strategy) and not (digests and (out / PLAN_FILE).exists())
                else None)  # a resume keeps its plan; a folder where nothing trained may plan again


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


def identify_source(config: Config) -> dict:
    """data.source as identified (source_identity: kind, resolved path, options, content digest) and
    the directory the run started in: what results.json and every saved network record."""
    return source_identity(config.data.source) | {"started_in": str(Path.cwd())}


def finished_run(args: argparse.Namespace) -> dict | None:
    """The record of a run that already finished in --out (results.json is written last), or None.

    A finished run is never trained or written again: its record is the real timings."""
    out = Path(args.out)
    path = out / "results.json"
    if not path.exists():
        return None
    try:
        results = load_results(path)
    except BadInput as err:
        raise BadInput(f"{err}, so {out} may hold a finished run; "
                       "look at it, then choose a new --out (or delete the folder to train again)") from None
    config = load_config(args.config, args.set)
    try:
        saved = tomllib.loads((out / "config.toml").read_text())
    except (OSError, ValueError):
        saved = None
    if saved is not None and saved != tomllib.loads(config.to_toml()):
        raise BadInput(f"{out} holds a run that finished with a different configuration (see "
                       f"{out / 'config.toml'}); a finished run is never changed: choose a new --out for "
                       "this configuration, or drop the changed --set/--config to see the finished run's table")
    when = datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
    return {"results": results, "when": when}


def _progress(entry: dict | None) -> str:
    return "" if entry is None else " (finished earlier)" if entry["finished"] else (
        f" (resuming at epoch {entry['epoch'] + 1}, step {entry['step'] + 1})")


def dry_run_text(plan: Plan, world: comm.World) -> str:
    """What a dry run checked (from the data's metadata) and what the run would do: steps per epoch
    as fit counts them (train.steps_per_epoch on a rank's share), and what --out already holds."""
    cfg, K, n = plan.config, plan.partitions, len(plan.data.train)
    labels = plan.data.train.labels
    checked = (f"{len(plan.data.classes)} classes, labels {labels.min()}..{labels.max()}"
               if cfg.model.task == "classification" and len(labels) else f"targets {plan.data.train.target_shape}")
    sub, glob, rand = plan.level_phase(0), plan.phase("global"), plan.phase("random")
    glob, rand = (dataclasses.replace(c, batch_size=plan.batches.get(name, c.batch_size))  # a resume's kept batch
                  for name, c in (("global", glob), ("random", rand)))
    per_group = max(world.size // K, 1)
    steps = {"sub": steps_per_epoch(sub, -(-n // per_group)), "global": steps_per_epoch(glob, -(-n // world.size)),
             "random": steps_per_epoch(rand, -(-n // world.size))}
    saved = checkpointed(plan)
    done = [k for k in range(K) if saved.get(f"sub_{k}", {}).get("finished")]
    todo = []
    if "ddc" in plan.strategies:
        left = [str(k) + _progress(saved.get(f"sub_{k}")) for k in range(K) if k not in done]
        which = f"sub-networks {', '.join(left)}" if done else f"{K} sub-networks"
        trains = f"train {which} {sub.epochs} epoch(s) of {steps['sub']} steps on their tiles" if left else ""
        loads = f"load sub-networks {', '.join(map(str, done))} (finished earlier)" if done else ""
        todo += [", ".join(filter(None, [loads, trains])) + f", compose them (one Gatherv), train GNet-T "
                 f"{glob.epochs} epoch(s) of {steps['global']} steps{_progress(saved.get('global'))}"]
    if "random" in plan.strategies:
        todo += [f"train GNet-R {rand.epochs} epoch(s) of {steps['random']} steps{_progress(saved.get('random'))}"]
    if len(plan.level_tiles) > 1:
        todo.insert(0, "train and compose level by level: " + " -> ".join(
            f"{len(tiles)} sub-networks on {'x'.join(map(str, tile_shape(tiles)))} tiles" for tiles in plan.level_tiles)
            + " -> the global network, epochs per level "
            + str([plan.level_phase(level).epochs for level in range(len(plan.level_tiles))])
            + f" of {steps['sub']} steps (below: the finest)")
    return (f"  data checked from its metadata: {n} train / {len(plan.data.val)} val samples, {checked}\n"
            f"{elastic_text(plan, saved, world.size)}dry run: nothing trained, nothing written. The run would "
            f"{'; then '.join(todo)}; and write "
            f"{plan.out}/ (results.json, metrics.csv, models, plots, logs).")


def code_version() -> str:
    """Hash of this package's sources: ranks running different code must not train together."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


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


def pipeline(args: argparse.Namespace) -> None:
    world = comm.init_world()
    args.out = args.out or str(default_out(args))
    finished, error, fresh_out = None, None, False
    if world.is_root:  # one reader decides for all, before anything is written
        fresh_out = not Path(args.out).exists()  # this run makes its out dir (removed again if the budget is refused)
        try:
            finished = finished_run(args)
        except BadInput as err:
            error = str(err)
    finished, error = comm.bcast(world, (finished, error), "checking for a finished run")
    if error is not None:
        raise comm.collective_error(error)
    if finished is not None:
        if world.is_root:
            table = report.table(finished["results"], args.out)
            names = [text for name, text in report.NAMES.items() if name in table]
            print(f"{args.out} finished earlier (results.json written {finished['when']}); nothing was trained "
                  f"or rewritten. Its results:\n{table}\n" + "".join(f"  {name}\n" for name in names)
                  + "To train again, choose a new --out.", flush=True)
        return
    plan, error = None, None
    try:
        plan = prepare(args, world.local_size)
    except BadInput as err:
        error = err
    comm.raise_first_bad_input(world, error)
    cfg = plan.config
    comm.agree(world, (cfg.full_digest(), code_version()), "the configuration and code version")
    if not args.dry_run:  # one rank reads (hashes) the data file, once; a dry run reads no sample
        plan.source = comm.bcast(world, identify_source(cfg) if world.is_root else None, "identifying the data source")
    if args.dry_run:  # refuses what the run would refuse, choosing nothing
        plan.batches, refusal = elastic_batches(plan, checkpointed(plan), world.size)
        comm.raise_first_bad_input(world, BadInput(refusal) if refusal else None)
    else:
        choose_resume(plan, world)
    determinism = comm.configure_determinism(cfg.run.deterministic, comm.device_type(cfg.run.device))
    plan.clock.resume_at(0.0)  # every rank leaves the startup collectives together: the job's clock starts
    world = comm.configure_world(world, cfg.run.device, cfg.run.collective_timeout)
    threads = comm.configure_threads(world, cfg.run.threads, cfg.run.deterministic)
    if args.dry_run:
        if cfg.run.budget:
            plan.budget = budget_phase(plan, world, print if world.is_root else lambda _: None, dry_run=True)
        if world.is_root:
            print(f"{report.plan_text(plan, world, threads)}\n{dry_run_text(plan, world)}", flush=True)
        return
    with Logger(plan.out / "logs" / f"rank{world.rank}.log", echo=world.is_root) as log:
        run_phases(plan, world, log, threads, determinism, fresh_out)


def run_phases(plan: Plan, world: comm.World, log: Logger, threads: int, determinism: str | None,
               fresh_out: bool) -> None:
    """The run proper, once every rank holds the plan: the budget's plan, the strategies' phases and
    rank 0's report, logged to this rank's file."""
    cfg = plan.config
    log(f"rank {world.rank} of {world.size}: pid {os.getpid()} on {platform.node()}, local rank "
        f"{world.local_rank} of {world.local_size}, device {world.device}")
    if determinism:
        log(determinism)
    if world.is_root:
        atomic_write(plan.out / "config.toml", cfg.to_toml().encode())
    rank_counts = record_rank_count(plan, world.size) if world.is_root else None
    comm.install_stop_handlers()
    if cfg.run.budget:
        plan.budget = budget_phase(plan, world, log, fresh_out=fresh_out)
    log(report.plan_text(plan, world, threads))
    results = Results(strategy=cfg.run.strategy, world_size=world.size, partitions=plan.partitions,
                      model=cfg.model.name, dataset=cfg.data.source, threads=threads, device=str(world.device),
                      precision=cfg.run.precision, resumed=plan.resume,
                      rank_counts=rank_counts, slurm_restarts=comm.restart_count(),
                      metric=plan.task.metric, backend=plan.backend, source=plan.source,
                      splits=plan.data.record(cfg.data.split_seed))
    elapsed = {}  # each strategy's seconds on the job clock
    if "ddc" in plan.strategies:
        started = plan.clock()
        if len(plan.level_tiles) > 1:
            compose_info, global_net, results.levels = multilevel_ddc(plan, world, log)
        else:
            compose_info, global_net = compose_phase(plan, world, sub_phase(plan, world, log), log)
        model = global_net if world.is_root else build(cfg, 1, plan.data.train.image_shape, 0)
        trained = global_phase(plan, world, "global", model, log, compose_info.pop("optimizer_state", None))
        elapsed["ddc"] = plan.clock() - started
        if world.is_root:  # only rank 0 holds the composed net's check and every sub history
            results.sub, results.compose, results.global_ = ddc_sections(
                compose_info, trained, plan.task.metric, plan.level_phase(0).epochs)
    if "random" in plan.strategies:
        started = plan.clock()
        baseline = build(cfg, 1, plan.data.train.image_shape, cfg.run.seed + RANDOM_INIT_SEED_OFFSET)
        results.random = Phase.from_trained(global_phase(plan, world, "random", baseline, log))
        elapsed["random"] = plan.clock() - started
    if world.is_root:
        if plan.budget is not None:
            results.budget = budget_record(plan.budget, elapsed)
        report.write(plan.out, results)
        print(report.table(results, plan.out), flush=True)


def resumable(args: argparse.Namespace) -> None:
    """The pipeline; a stop (every rank at once) says where the checkpoints are and how to resume."""
    try:
        pipeline(args)
    except comm.Preempted as stop:
        raise comm.Preempted(f"{stop}; the checkpoints are in {args.out}: run the same command again (it uses "
                             f"--out {args.out}) to resume") from None


def command(argv) -> tuple[typing.Callable[[], None], bool]:
    """What `python -m ddc_hpc.run argv` runs (the resumable pipeline) and whether it shows
    tracebacks for bad input (--debug); argparse exits (2, or 0 for --help) on a bad command line."""
    args = parse_args(argv)
    return (lambda: resumable(args)), args.debug


def main(argv=None) -> None:
    comm.run_guarded(*command(argv))


def run_here(argv: list[str]) -> int:
    """main(argv) on this process's MPI world for a caller that goes on afterwards (the test suite
    runs whole jobs in its pytest-mpi stages): the same job, and the exit code main() would exit
    with, the process left as it was (comm.run_contained; raises comm.RankFailed where main() would
    abort the job)."""
    try:
        work, debug = command(argv)
    except SystemExit as exited:  # argparse's verdict on the command line, as main() exits with it
        return exited.code
    return comm.run_contained(work, debug)


if __name__ == "__main__":
    main()
