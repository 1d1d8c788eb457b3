"""The phases a run trains (sub, compose, global; the GNet-R baseline is a global phase) and what
they share: each rank's log, a network's data parallelism, a slot's checkpointed fit, the saved
networks. levels.py trains decompose.levels' sub-networks with the same parts.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from . import comm
from .checkpoint import CheckpointSeries, save_torch
from .compose import (compose, flatten_fc_layers, flatten_state, shrink_perturb, state_numel, theorem_error,
                      unflatten_state, with_parameters)
from .config import PhaseConfig
from .data import Splits, make_batch
from .engine import MPIDataParallel
from .errors import BadInput
from .partition import subnet_group, subnet_owner, subnets_of_rank
from .plan import Plan, build
from .train import Job, PhaseData, evaluate, fit, make_optimizer, recalibrate_bn, to_cuda_layout


THEOREM_RTOL = 1e-4  # composed logits vs sum of sub-network logits, relative to max |logit|
SHRINK_PERTURB_SEED_OFFSET = 104729  # global.perturb's fresh initialisation: run.seed + this


class Logger:
    """Per-rank log file; rank 0 also prints, so the terminal shows one line per epoch. A context
    manager: the file is closed however the run ends (an in-process job leaves no file open), and
    an exception that ends the run is written to it first (with its traceback unless it is bad
    input or a stop), so each rank's file says why the rank stopped."""

    def __init__(self, path: Path, echo: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", buffering=1)
        self.echo = echo

    def __call__(self, message: str, echo: bool = True) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        self.file.write(f"{stamp} {message}\n")
        if self.echo and echo:
            print(message, flush=True)

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is not None:  # the terminal hears of it from comm.run_guarded
            expected = isinstance(error, BadInput | comm.Preempted)
            self(f"ended by {kind.__name__}: {error}"
                 + ("" if expected else "\n" + "".join(traceback.format_exception(kind, error, trace)).rstrip()),
                 echo=False)
        self.file.close()


def phase_data(plan: Plan, tile, data: Splits | None = None) -> PhaseData:
    data = data or plan.data
    return PhaseData(train=data.train, val=data.val, mean=data.mean, tile=tile,
                     augment=plan.config.data.augment, max_shift=plan.config.data.max_shift)


def data_parallel(model: torch.nn.Module, world: comm.World, backend: str,
                  compile_backend: str = "") -> torch.nn.Module:
    """The model on this rank's device, compiled in place with torch.compile's `compile_backend`
    when one is given (its state_dict keeps its keys), wrapped for data parallelism over `world`
    (and the torch.distributed process group made over it): torch DDP, or the toolkit's own MPI
    engine for `run.backend = "mpi4py"`. Both start from rank 0's weights (the composed net in the
    global phase)."""
    model = model.to(world.device)
    if world.device.type == "cuda":  # batches take the same layouts there (train.to_device)
        model = to_cuda_layout(model)
    if compile_backend:  # before DDP wraps it, as torch's docs recommend
        model.compile(backend=compile_backend)
    if comm.group_size() == 1:
        return model
    if backend == "mpi4py":
        return MPIDataParallel(model, world)
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def release(model: torch.nn.Module) -> None:
    """A phase is done training `model` (data_parallel's): the MPI engine's gradient hooks and private
    communicator are freed there (DDP's process group ends with torch.distributed's shutdown)."""
    if isinstance(model, MPIDataParallel):
        model.close()


def run_job(job: Job, world: comm.World, slot_name: str, plan: Plan) -> list[dict]:
    """Fit a job, or take its finished state from the out dir; checkpoints are read by all peers."""
    entry = plan.resume_from.get(slot_name)
    saved = None if entry is None else CheckpointSeries(plan.out / "checkpoints", slot_name,
                                                         plan.config.digest()).load(entry)
    if saved is not None and saved["finished"]:
        job.module.load_state_dict(saved["model"])
        job.optimizer_state = saved["optimizer"]
        job.clock.resume_at(saved["elapsed"])
        job.log(f"[{job.name}] finished earlier; loaded from checkpoint")
        return list(saved["history"])
    if slot_name in plan.batches:
        job.config = dataclasses.replace(job.config, batch_size=plan.batches[slot_name])
        job.log(f"[{job.name}] continued from a run of {entry['ranks']} rank(s): {job.config.batch_size} samples "
                "a rank, the batch of a step over all ranks kept")
    if saved is not None:
        job.log(f"[{job.name}] resuming at epoch {saved['epoch'] + 1}, step {saved['step'] + 1}")
    return fit(job, world.device, resume=saved)


def sub_phase(plan: Plan, world: comm.World, log: Logger) -> dict:
    """Train this rank's sub-networks on their tiles: no communication between sub-domains.

    The phase runs in comm.enter_sub_group's world, which reaches no one when R <= K (and
    torch.distributed is not initialised) and only the sub-network's own group when R > K;
    `world` itself only names ranks (collectives on it raise comm.StrayCollective here).
    """
    cfg, K = plan.config, plan.partitions
    mine = subnets_of_rank(world.rank, world.size, K)
    local = comm.enter_sub_group(world, plan.backend, subnet_group(mine[0], world.size, K))
    comm.set_phase("sub")
    comm.stray_point(world)
    tic, started = time.perf_counter(), plan.clock()
    trained, preempted = {}, None
    for k in mine:
        model = build(cfg, K, plan.tile_sample_shape, cfg.run.seed * 1000 + k + 1)
        writer = subnet_owner(k, world.size, K) == world.rank
        slot = (CheckpointSeries(plan.out / "checkpoints", f"sub_{k}", cfg.digest(), ranks=world.size) if writer
                else None)
        wrapped = data_parallel(model, local, plan.backend, cfg.sub.compile)
        job = Job(name=f"sub_{k}", model=wrapped, config=plan.phase("sub"), task=plan.task,
                  data=phase_data(plan, plan.tiles[k]), slot=slot, seed=cfg.run.seed * 1000 + k,
                  rank=world.rank, checkpoint_every=cfg.run.checkpoint_every, precision=cfg.run.precision,
                  progress_seconds=cfg.run.progress_seconds, log=log, clock=plan.clock)
        try:
            history = run_job(job, local, f"sub_{k}", plan)
        except comm.Preempted as stop:  # told to everyone at the first collective, in compose
            preempted = str(stop)
            break
        release(wrapped)
        if writer:
            save_torch(_model_file(job.module, plan, plan.tiles[k]), plan.out / f"subnet_{k}.pt")
            trained[k] = (job.module, history, job.optimizer_state)
    comm.leave_sub_group(local)
    here = time.perf_counter() - tic
    return {"trained": trained, "seconds": here, "preempted": preempted,
            "recorded_seconds": pieces_seconds(here, [history for _, history, _ in trained.values()]),
            "reach": local.size,
            "elapsed_start": started, "elapsed_end": plan.clock()}


def _model_file(module: torch.nn.Module, plan: Plan, tile=None) -> dict:
    """A saved network with what it takes to rebuild and feed it (spec, training mean, tile, and the
    shape of the samples it was trained on)."""
    return {"spec": getattr(module, "ddc_spec", None), "state_dict": module.state_dict(),
            "mean": plan.data.mean, "tile": tile, "config": plan.config.to_dict(),
            "sample_shape": plan.data.train.image_shape, "source": plan.source}


ARRIVAL_SLACK = 2  # the slowest rank may take this many times the longest sub epoch measured here, per epoch


def arrival_allowance(plan: Plan, world: comm.World, sub: dict) -> tuple[float, str]:
    """How long after its sub phase began a rank waits for every rank to finish theirs, and why.

    Independent work differs in length (R < K with K % R != 0, a resume in which some sub-networks
    had finished, jitter over hours), so the wait is proportionate to the most work any rank has,
    timed by the slowest sub epoch this rank saw: only a rank that makes no progress is caught.
    Never less than run.collective_timeout (all that is left without a measured epoch).
    """
    def epochs(rank: int) -> int:
        return len(subnets_of_rank(rank, world.size, plan.partitions)) * plan.phase("sub").epochs

    measured = [row["seconds"] for _, history, _ in sub["trained"].values() for row in history]
    epoch = max(measured + [sub["seconds"] / epochs(world.rank)])
    most = max(epochs(r) for r in range(world.size))
    timeout = plan.config.run.collective_timeout
    return timeout + ARRIVAL_SLACK * most * epoch, (
        f"run.collective_timeout {timeout:g} s + {ARRIVAL_SLACK} x {most} sub epochs, the most a rank trains, "
        f"x {epoch:.1f} s, the slowest sub epoch rank {world.rank} saw")


def compose_phase(plan: Plan, world: comm.World, sub: dict, log: Logger) -> tuple[dict, torch.nn.Module | None]:
    """One Gatherv of every trained sub-network to rank 0, which composes and checks Theorem 2.1."""
    comm.set_phase("compose")
    allowed, why = arrival_allowance(plan, world, sub)
    comm.arrive(world, "finish the sub phase", allowed, time.monotonic() - sub["seconds"], why)
    cfg, K = plan.config, plan.partitions
    carry = cfg.global_.carry_optimizer
    mine = sorted(sub["trained"])
    flat = np.concatenate([np.zeros(0, np.float32)] + [flatten_state(net).cpu().numpy() for k in mine
                                                      for net in _payload(*sub["trained"][k], carry)])
    summaries = comm.allgather(world, {"histories": {k: sub["trained"][k][1] for k in mine},
                                       "steps": {k: _adam_steps(sub["trained"][k][2]) for k in mine if carry},
                                       "seconds": sub["seconds"], "recorded_seconds": sub["recorded_seconds"],
                                       "preempted": sub["preempted"],
                                       "reach": sub["reach"],
                                       "elapsed_start": sub["elapsed_start"], "elapsed_end": sub["elapsed_end"]},
                               "gathering sub-network metrics")
    tic = time.perf_counter()  # the slowest sub-network has arrived: its wait is the sub phase's imbalance
    stopped = [(r, s["preempted"]) for r, s in enumerate(summaries) if s["preempted"]]
    if stopped:
        raise comm.Preempted(f"rank {stopped[0][0]} was stopped in the sub phase ({stopped[0][1]}); "
                             "every sub-network is checkpointed")
    gathered = comm.gatherv(world, flat)
    info = {"seconds_sub": max(s["recorded_seconds"] for s in summaries), "histories": {},
            "reach_per_rank": [s["reach"] for s in summaries],
            "imbalance_seconds": max(s["seconds"] for s in summaries) - min(s["seconds"] for s in summaries),
            "sub_elapsed": (min(s["elapsed_start"] for s in summaries), max(s["elapsed_end"] for s in summaries))}
    steps = {}
    for s in summaries:
        info["histories"].update(s["histories"])
        steps.update(s["steps"])
    if not world.is_root:
        return info | {"seconds": time.perf_counter() - tic}, None
    offset = 0
    owners = sorted(range(K), key=lambda k: (subnet_owner(k, world.size, K), k))
    by_k = {}
    for k in owners:
        by_k[k] = []
        for _ in range(3 if carry else 1):  # the weights, then Adam's two moments in the same layout
            net = build(cfg, K, plan.tile_sample_shape, 0)
            n = state_numel(net)
            unflatten_state(net, torch.from_numpy(gathered[offset : offset + n]))
            by_k[k], offset = by_k[k] + [net], offset + n
    subnets = [by_k[k][0].eval() for k in range(K)]
    global_net = build(cfg, 1, plan.data.train.image_shape, 0)
    placement = dict(task=cfg.model.task, tiles=plan.tiles, input_size=plan.data.train.image_shape[:-1])
    compose(subnets, global_net, **placement).eval()
    probe_images, _ = plan.data.val.read(np.arange(min(16, len(plan.data.val))))
    probe = make_batch(probe_images, mean=plan.data.mean, tile=None, augment=False, generator=None)
    error = theorem_error(global_net, subnets, probe, task=cfg.model.task, tiles=plan.tiles)
    fields = ", per tile field (flatten-FC head)" if flatten_fc_layers(global_net) else ""
    log(f"[compose] Theorem 2.1 on {len(probe)} probe images{fields}: max |F - sum_k F_k| = "
        f"{error['max_abs']:.3g} (relative {error['max_rel']:.3g})")
    if not error["max_rel"] <= THEOREM_RTOL:
        raise RuntimeError(f"the composed network does not equal the sum of its sub-networks: relative "
                           f"error {error['max_rel']:.3g} > {THEOREM_RTOL:g}")
    save_torch(_model_file(global_net, plan), plan.out / "composed_model.pt")
    if carry:
        moments = [compose([by_k[k][i] for k in range(K)], build(cfg, 1, plan.data.train.image_shape, 0), **placement)
                   for i in (1, 2)]
        info["optimizer_state"] = _composed_adam_state(global_net, *moments, max(steps.values()), plan.phase("global"))
    if cfg.global_.shrink != 1 or cfg.global_.perturb:
        fresh = build(cfg, 1, plan.data.train.image_shape, cfg.run.seed + SHRINK_PERTURB_SEED_OFFSET)
        shrink_perturb(global_net, fresh, cfg.global_.shrink, cfg.global_.perturb)
    info.update(max_abs_error=error["max_abs"], max_rel_error=error["max_rel"], bytes_gathered=gathered.nbytes)
    return info | {"seconds": time.perf_counter() - tic}, global_net


def _payload(module: torch.nn.Module, history: list, optimizer_state: dict | None, carry: bool) -> list:
    """What a trained sub-network sends to compose: its weights, and with global.carry_optimizer
    Adam's first and second moments in the network's own layout (compose places them alike)."""
    if not carry:
        return [module]
    state = optimizer_state["state"]
    return [module] + [with_parameters(module, [state[i][key] for i in range(len(state))])
                       for key in ("exp_avg", "exp_avg_sq")]


def _adam_steps(optimizer_state: dict) -> int:
    return int(max(float(s["step"]) for s in optimizer_state["state"].values()))


def _composed_adam_state(global_net: torch.nn.Module, exp_avg: torch.nn.Module, exp_avg_sq: torch.nn.Module,
                         steps: int, config: PhaseConfig) -> dict:
    """GNet-T's Adam state from the composed moments (zeros across blocks), the sub-networks'
    step count kept for Adam's bias correction; the param groups of GNet-T's own optimizer."""
    groups = make_optimizer(global_net.parameters(), config).state_dict()["param_groups"]
    # Adam keeps its step count on the CPU (unless capturable or fused), the moments on the parameters' device
    state = {i: {"step": torch.tensor(float(steps), device="cpu"), "exp_avg": m.detach().clone(),
                 "exp_avg_sq": v.detach().clone()}
             for i, (m, v) in enumerate(zip(exp_avg.parameters(), exp_avg_sq.parameters()))}
    return {"state": state, "param_groups": groups}


def global_phase(plan: Plan, world: comm.World, name: str, model: torch.nn.Module, log: Logger,
                 optimizer_state: dict | None = None) -> dict:
    """Data-parallel training of a global network over all ranks (GNet-T or the GNet-R baseline),
    its optimizer starting from rank 0's `optimizer_state` when one is given."""
    comm.set_phase(name)
    cfg = plan.config
    tic = time.perf_counter()
    comm.init_distributed(world, plan.backend)
    phase_cfg = plan.phase(name)
    ddp = data_parallel(model, world, plan.backend, phase_cfg.compile)
    if name == "global" and cfg.global_.carry_optimizer:
        optimizer_state = comm.bcast(world, optimizer_state, "broadcasting GNet-T's composed optimizer state")
    slot = CheckpointSeries(plan.out / "checkpoints", name, cfg.digest(), ranks=world.size) if world.is_root else None
    job = Job(name=name, model=ddp, config=phase_cfg, data=phase_data(plan, None), slot=slot, task=plan.task,
              seed=cfg.run.seed + (1 if name == "global" else 2), rank=world.rank, group=None,
              checkpoint_every=cfg.run.checkpoint_every, precision=cfg.run.precision,
              progress_seconds=cfg.run.progress_seconds, log=log, clock=plan.clock, optimizer_state=optimizer_state)
    timed = {"history": [], "initial": None, "recalibrated": None, "init_eval_seconds": 0.0,
             "recalibrate_seconds": 0.0, "recalibrated_eval_seconds": 0.0}
    if name == "global":  # GNet-T before training, each part timed apart: in neither compose's nor global's seconds
        setup = time.perf_counter() - tic
        scored = phase_cfg.eval_every != 0  # 0: GNet-T is scored only after its last epoch

        def timed_part(key: str, work) -> dict:
            part = time.perf_counter()
            done = work()
            timed[key] = time.perf_counter() - part
            return done

        def score():
            return evaluate(ddp, job.data, world.device, plan.task, precision=cfg.run.precision)

        if scored and (phase_cfg.evaluate_before_recalibration or not phase_cfg.bn_recalibrate_batches):
            timed["initial"] = timed_part("init_eval_seconds", score)
        if phase_cfg.bn_recalibrate_batches:  # statistics of full images, not the tiles' (measured both)
            timed_part("recalibrate_seconds", lambda: recalibrate_bn(
                job.module, job.data, world.device, phase_cfg.bn_recalibrate_batches, phase_cfg.batch_size, job.seed,
                precision=cfg.run.precision))
            if scored:
                timed["recalibrated"] = timed_part("recalibrated_eval_seconds", score)
        tic = time.perf_counter() - setup
    started = plan.clock()
    timed["history"] = run_job(job, world, name, plan)
    release(ddp)
    if world.is_root:
        save_torch(_model_file(job.module, plan), plan.out / ("model.pt" if name == "global" else "random_model.pt"))
    return timed | {"seconds": pieces_seconds(time.perf_counter() - tic, [timed["history"]]),
                    "elapsed_start": started, "elapsed_end": plan.clock()}


def pieces_seconds(here: float, histories: list[list[dict]]) -> float:
    """A phase's seconds across a stop and resume: what this process spent on it (`here`), or, when
    more, the sum of the recorded pieces, its epochs' seconds (every process that trained them: a
    resumed epoch's row carries its earlier part) over the histories one after the other."""
    return max(here, sum(row["seconds"] for history in histories for row in history))
