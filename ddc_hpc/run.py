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
import os
import platform
import tomllib
import typing
from pathlib import Path

import torch

from . import budget, comm, report, strategies
from .calibration import budget_phase, budget_record, share_rule
from .checkpoint import atomic_write, existing_digests
from .config import RANDOM_INIT_SEED_OFFSET, Config, load_config
from .data import check_tiles, load_from_config, source_identity
from .errors import BadInput
from .levels import level_layout, multilevel_ddc
from .models import model_defaults, model_options
from .partition import default_grid, tile_shape, tile_slices_nd, validate_layout
from .phases import Logger, compose_phase, global_phase, sub_phase
from .plan import PLAN_FILE, Plan, build, checkpointed
from .results import Phase, Results, ddc_sections, load_results
from .resume import choose_resume, elastic_batches, elastic_text, record_rank_count
from .train import steps_per_epoch


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
