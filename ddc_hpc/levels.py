"""decompose.levels (e.g. [16, 4]): the sub-networks trained and composed level by level, each
composition one Gatherv over the next level's sub-network's ranks, checked against Theorem 2.1;
the last level composes into the global network as one level does (phases.compose_phase).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from . import comm
from .checkpoint import CheckpointSeries, save_torch
from .compose import compose_group, flatten_state, state_numel, theorem_error, unflatten_state
from .config import Config
from .data import make_batch
from .errors import BadInput
from .partition import level_gather, level_grids, level_group, level_placement, level_tiles, relative_tiles, tile_shape
from .phases import (ARRIVAL_SLACK, THEOREM_RTOL, Logger, _model_file, compose_phase, data_parallel, phase_data,
                     pieces_seconds, release, run_job)
from .plan import Plan, build
from .train import Job, evaluate


def level_layout(config: Config, sample_shape: tuple[int, ...], ranks: int) -> list[list[tuple[slice, ...]]]:
    """decompose.levels' tiles, finest first, checked before any work (BadInput): each level's grid
    refines the next one's, the ranks place on every level, and every level's sub-network builds
    (widths divide, tiles meet the model's minimum) on the meta device, which allocates nothing."""
    d, spatial = config.decompose, sample_shape[:-1]
    try:
        levels = level_tiles(spatial, level_grids(d.level_counts, len(spatial), d.grid), d.overlap, d.crop)
        if config.run.strategy != "random" or len(d.level_counts) > 1:
            level_placement(ranks, d.level_counts)
    except ValueError as err:
        raise BadInput(f"decompose.levels = {list(d.level_counts)} does not fit the {spatial} samples: {err}") from None
    for level, (count, tiles) in enumerate(zip(d.level_counts[1:], levels[1:]), start=1):
        try:
            with torch.device("meta"):
                build(config, count, tile_shape(tiles) + sample_shape[-1:], 0)
        except (ValueError, TypeError, KeyError) as err:
            raise BadInput(f"model {config.model.name!r} cannot be built for level {level} of decompose.levels = "
                           f"{list(d.level_counts)} ({count} sub-networks on {tile_shape(tiles)} tiles): {err}") from None
    return levels


def level_slot(level: int, k: int) -> str:
    """Checkpoint slot and metrics phase of sub-network k of level `level`: today's sub_<k> at the
    finest level, l<level>_sub_<k> above it."""
    return f"sub_{k}" if level == 0 else f"l{level}_sub_{k}"


def last_level_view(plan: Plan) -> Plan:
    """The plan as compose_phase sees the last level of decompose.levels: its sub-networks are the
    ones the global network is composed from (placed as one level places them)."""
    d = plan.config.decompose
    decompose = dataclasses.replace(d, partitions=d.level_counts[-1], grid=(), levels=(), level_epochs=())
    sub = dataclasses.replace(plan.config.sub, epochs=plan.level_phase(len(d.level_counts) - 1).epochs)
    return dataclasses.replace(plan, config=dataclasses.replace(plan.config, decompose=decompose, sub=sub),
                               tiles=plan.level_tiles[-1])


def compose_into(plan: Plan, world: comm.World, local: comm.World, level: int, j: int, below: dict,
                 log: Logger) -> tuple:
    """Sub-network j of level `level` from its group of level `level - 1` (`below`: the finer nets
    this rank owns): one Gatherv over j's ranks (`local`; none when j has one rank, which then
    holds the whole group) to j's owner, which composes them (compose_group) and checks Theorem
    2.1 on probe images cut to j's tile.  Returns (the net, the check) on the owner, (None, {})
    elsewhere."""
    cfg, counts = plan.config, plan.config.decompose.level_counts
    tic = time.perf_counter()
    finer, tiles = plan.level_tiles[level - 1], plan.level_tiles[level]
    finer_shape = tile_shape(finer) + plan.data.train.image_shape[-1:]
    n = state_numel(build(cfg, counts[level - 1], finer_shape, 0))
    members = level_group(j, counts, level - 1)
    if local.size > 1:
        flat = np.concatenate([np.zeros(0, np.float32)] + [flatten_state(below[k][0]).cpu().numpy()
                                                          for k in members if k in below])
        gathered = comm.gatherv(local, flat)
        if not local.is_root:
            return None, {}
        order = level_gather(world.size, counts, level - 1, [n] * counts[level - 1])[j]["order"]
        nets = {}
        for i, k in enumerate(order):
            nets[k] = build(cfg, counts[level - 1], finer_shape, 0)
            unflatten_state(nets[k], torch.from_numpy(gathered[i * n:(i + 1) * n]))
    else:
        nets = {k: below[k][0] for k in members}
    subnets = [nets[k].eval() for k in members]
    parent = build(cfg, counts[level], tile_shape(tiles) + plan.data.train.image_shape[-1:], 0)
    compose_group(subnets, parent, [finer[k] for k in members], tiles[j], cfg.model.task).eval()
    probe_images, _ = plan.data.val.read(np.arange(min(16, len(plan.data.val))))
    probe = make_batch(probe_images, mean=plan.data.mean, tile=tiles[j], augment=False, generator=None)
    error = theorem_error(parent, subnets, probe, task=cfg.model.task,
                          tiles=relative_tiles([finer[k] for k in members], tiles[j]))
    log(f"[compose l{level}_sub_{j}] Theorem 2.1 on {len(probe)} probe tiles: max |F - sum_k F_k| = "
        f"{error['max_abs']:.3g} (relative {error['max_rel']:.3g})")
    if not error["max_rel"] <= THEOREM_RTOL:
        raise RuntimeError(f"level {level}'s sub-network {j} does not equal the sum of its group's sub-networks: "
                           f"relative error {error['max_rel']:.3g} > {THEOREM_RTOL:g}")
    return parent, {"max_abs_error": error["max_abs"], "max_rel_error": error["max_rel"],
                    "seconds": time.perf_counter() - tic}


def train_level(plan: Plan, world: comm.World, log: Logger, level: int, below: dict | None) -> dict:
    """Train this rank's sub-networks of level `level` of decompose.levels (level_placement): the
    finest from their seeded initialisation, a coarser one from its group's composition
    (compose_into, from `below`, the finer level's trained nets this rank owns).  No communication
    beyond a sub-network's own ranks; returns sub_phase's record, with each composition's check
    ("checks") and each composed net's score before training ("initial"), on its owner."""
    cfg, counts = plan.config, plan.config.decompose.level_counts
    placement, tiles = level_placement(world.size, counts)[level], plan.level_tiles[level]
    shape = tile_shape(tiles) + plan.data.train.image_shape[-1:]
    mine = [k for k, ranks in enumerate(placement) if world.rank in ranks]
    local = comm.enter_sub_group(world, plan.backend, placement[mine[0]])
    comm.set_phase("sub")
    tic, started = time.perf_counter(), plan.clock()
    trained, checks, initial, preempted = {}, {}, {}, None
    for k in mine:
        name, seed = level_slot(level, k), cfg.run.seed * 1000 + 100 * level + k
        writer = placement[k][0] == world.rank
        model = build(cfg, counts[level], shape, seed + 1)
        if level:
            composed, check = compose_into(plan, world, local, level, k, below, log)
            model, checks[k] = (composed, check) if composed is not None else (model, None)
        slot = CheckpointSeries(plan.out / "checkpoints", name, cfg.digest(), ranks=world.size) if writer else None
        wrapped = data_parallel(model, local, plan.backend, cfg.sub.compile)
        job = Job(name=name, model=wrapped, config=plan.level_phase(level), task=plan.task,
                  data=phase_data(plan, tiles[k]), slot=slot, seed=seed, rank=world.rank,
                  checkpoint_every=cfg.run.checkpoint_every, precision=cfg.run.precision,
                  progress_seconds=cfg.run.progress_seconds, log=log, clock=plan.clock)
        if level:
            initial[k] = evaluate(wrapped, job.data, world.device, plan.task, precision=cfg.run.precision)
        try:
            history = run_job(job, local, name, plan)
        except comm.Preempted as stop:  # told to everyone at the exchange after the level
            preempted = str(stop)
            break
        release(wrapped)
        if writer:
            save_torch(_model_file(job.module, plan, tiles[k]), plan.out / f"{name.replace('sub', 'subnet')}.pt")
            trained[k] = (job.module, history, job.optimizer_state)
    comm.leave_sub_group(local)
    here = time.perf_counter() - tic
    return {"trained": trained, "seconds": here, "preempted": preempted, "checks": checks, "initial": initial,
            "recorded_seconds": pieces_seconds(here, [history for _, history, _ in trained.values()]),
            "reach": local.size, "elapsed_start": started, "elapsed_end": plan.clock()}


def level_exchange(plan: Plan, world: comm.World, level: int, done: dict) -> dict | None:
    """After each level: every rank learns whether one was stopped (then all stop, every
    sub-network checkpointed), and rank 0 gets the level's record: each sub-network's score on its
    tile, its composed start's score and its composition's check, the level's seconds (and, for
    multilevel_ddc, the histories and the level's start on the job clock)."""
    comm.set_phase("compose")
    metric = plan.task.metric
    timeout = plan.config.run.collective_timeout
    slowest = max([row["seconds"] for _, history, _ in done["trained"].values() for row in history] + [done["seconds"]])
    comm.arrive(world, f"finish level {level}", timeout + ARRIVAL_SLACK * plan.level_phase(level).epochs * slowest,
                time.monotonic() - done["seconds"], f"run.collective_timeout {timeout:g} s + {ARRIVAL_SLACK} x the "
                f"level's epochs x {slowest:.1f} s, the slowest sub epoch or level rank {world.rank} saw")
    keys = ("preempted", "checks", "initial", "seconds", "recorded_seconds", "elapsed_start")
    summaries = comm.allgather(world, {key: done[key] for key in keys}
                               | {"histories": {k: history for k, (_, history, _) in done["trained"].items()}},
                               f"gathering level {level}'s records")
    stopped = [(r, s["preempted"]) for r, s in enumerate(summaries) if s["preempted"]]
    if stopped:
        raise comm.Preempted(f"rank {stopped[0][0]} was stopped in level {level} ({stopped[0][1]}); every "
                             "sub-network is checkpointed")
    if not world.is_root:
        return None
    merged = {key: {k: v for s in summaries for k, v in s[key].items() if v is not None}
              for key in ("histories", "checks", "initial")}
    count = plan.config.decompose.level_counts[level]
    histories = [merged["histories"][k] for k in range(count)]
    return {"level": level, "partitions": count, "tile": list(tile_shape(plan.level_tiles[level])),
            "seconds": max(s["recorded_seconds"] for s in summaries), "epochs": plan.level_phase(level).epochs,
            "per_subnet_" + metric: [h[-1][metric] for h in histories],
            "composed_" + metric: [merged["initial"][k][metric] for k in range(count)] if level else None,
            "max_abs_error": max((c["max_abs_error"] for c in merged["checks"].values()), default=None),
            "max_rel_error": max((c["max_rel_error"] for c in merged["checks"].values()), default=None),
            "compose_seconds": max((c["seconds"] for c in merged["checks"].values()), default=None),
            "histories": histories, "elapsed_start": min(s["elapsed_start"] for s in summaries)}


def multilevel_ddc(plan: Plan, world: comm.World, log: Logger) -> tuple[dict, torch.nn.Module | None, list]:
    """decompose.levels' DDC: each level trains (train_level, level_exchange), then composes group by
    group into the next; the last composes into the global network as one level does
    (compose_phase).  Returns compose_phase's record, now with the finest level's histories and
    every level's seconds as the sub phase's (results.json's sub section), its net, and rank 0's
    per-level records (results.json's levels)."""
    counts, below, records = plan.config.decompose.level_counts, None, []
    for level in range(len(counts)):
        done = train_level(plan, world, log, level, below)
        records.append(level_exchange(plan, world, level, done))
        below = done["trained"]
    info, global_net = compose_phase(last_level_view(plan), world, done, log)
    if not world.is_root:
        return info, global_net, []
    histories = records[0]["histories"]
    info |= {"histories": dict(enumerate(histories)), "seconds_sub": sum(r["seconds"] for r in records),
             "sub_elapsed": (records[0]["elapsed_start"], info["sub_elapsed"][1])}
    return info, global_net, [{k: v for k, v in r.items() if k != "elapsed_start" and (r["level"] or k != "histories")}
                              for r in records]  # the finest level's histories are the sub section's
