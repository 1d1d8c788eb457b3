"""Fit and evaluate loops shared by every phase: optimizers, LR schedules, resumable state.

One loop serves the sub-networks (one rank or a data-parallel group), the composed global net and
the random baseline. Every step's randomness (augmentation, dropout) is seeded from (seed, epoch,
step), so a run stopped at a step boundary and resumed follows exactly the uninterrupted path.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from . import comm
from .checkpoint import CheckpointSeries
from .config import PhaseConfig
from .data import SampleSet, make_batch
from .partition import shard_range


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
EVAL_BATCH = 256  # samples per rank in one forward pass of evaluate


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf: the phase stops, the last good checkpoint stays."""


# fp16 only: this many non-finite losses in a row stop the phase. GradScaler skips a step whose
# gradients overflowed and lowers its scale, which recovers from a backward overflow within a few
# steps; a forward that overflows step after step (loss scaling cannot help it) does not recover.
NONFINITE_FP16_STEPS = 20


def nonfinite_streak(finite: bool, scaled: bool, streak: int) -> tuple[int, bool]:
    """(non-finite losses in a row after this step, whether the phase must stop). Without loss
    scaling (fp32, bf16) the first non-finite loss stops it: the weights would take that step. With
    fp16's GradScaler the step is skipped instead, so only NONFINITE_FP16_STEPS in a row stop it."""
    streak = 0 if finite else streak + 1
    return streak, streak >= (NONFINITE_FP16_STEPS if scaled else 1)


@dataclass(frozen=True)
class Task:
    """What is learned: the loss, the validation metrics, and which metric decides 'better'."""

    name: str = "classification"  # or "regression" (targets are floats), "autoencoder" (target = input)
    loss: str = "cross_entropy"  # or "mse", "l1"

    @property
    def metric(self) -> str:
        return "val_accuracy" if self.name == "classification" else "val_rmse"

    @property
    def higher_is_better(self) -> bool:
        return self.name == "classification"

    def target(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return x if self.name == "autoencoder" else labels

    def criterion(self, output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.loss == "cross_entropy":
            return F.cross_entropy(output, target, reduction=reduction)
        target = target.to(output.dtype).reshape(output.shape)
        return (F.mse_loss if self.loss == "mse" else F.l1_loss)(output, target, reduction=reduction)


@dataclass
class PhaseData:
    train: SampleSet
    val: SampleSet
    mean: torch.Tensor
    tile: tuple[slice, ...] | None = None  # None: full images
    augment: bool = True
    max_shift: int = 4


class Clock:
    """Seconds since the job started, one clock for every phase, so each epoch's end has a place on
    a time axis shared by DDC and GNet-R. A resumed phase sets it to its checkpoint's reading: the
    time between a stop and the restart is not counted."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start

    def resume_at(self, elapsed: float) -> None:
        self.start = time.perf_counter() - elapsed


@dataclass
class Job:
    """One trainable thing: what it is, how it is trained, where its checkpoints live."""

    name: str
    model: nn.Module  # possibly DDP-wrapped; `module` below is the bare network
    config: PhaseConfig
    data: PhaseData
    slot: CheckpointSeries | None  # only the writer of the group gets one
    seed: int
    task: Task = Task()
    rank: int = 0  # world rank, for messages
    group: object = None  # torch.distributed group of data-parallel peers, None for a lone rank
    checkpoint_every: int = 1
    precision: str = "fp32"  # run.precision: the autocast dtype of forward and loss
    progress_seconds: float = 0.0  # a progress line within an epoch at most this often; 0: none
    log: Callable[[str], None] = print
    history: list[dict] = field(default_factory=list)
    clock: Clock = field(default_factory=Clock)
    # The optimizer state fit starts from when not resuming (None: a fresh optimizer; GNet-T: the
    # sub-networks' Adam moments composed, global.carry_optimizer); fit leaves its final state here.
    optimizer_state: dict | None = None

    @property
    def module(self) -> nn.Module:
        return getattr(self.model, "module", self.model)


def autocast(device: torch.device, precision: str):
    """Mixed precision for forward and loss only (run.precision): parameters, gradients and the
    optimizer state stay fp32, so composition and the Gatherv see fp32 weights whatever it is."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision), enabled=precision in AUTOCAST_DTYPES)


def memory_format(ndim: int) -> torch.memory_format:
    """The layout of cuDNN's tensor-core convolutions for a tensor of `ndim` axes: channels_last for
    4-D images and Conv2d weights, channels_last_3d for 5-D volumes and Conv3d weights, the plain
    layout for any other (torch refuses channels_last on a tensor that is not 4-D)."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim, torch.contiguous_format)


def to_cuda_layout(module: nn.Module) -> nn.Module:
    """Every parameter and buffer of `module` in the layout of its own rank (memory_format), in
    place: one model may hold 4-D and 5-D weights, which `module.to(memory_format=...)` cannot serve.
    For CUDA only (see to_device)."""
    for tensor in (*module.parameters(), *module.buffers()):
        tensor.data = tensor.data.contiguous(memory_format=memory_format(tensor.ndim))
    return module


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`. On CUDA it goes through pinned memory without blocking (the copy
    overlaps kernels already queued) and image and volume batches take the layout of cuDNN's
    tensor-core convolutions (memory_format). Never channels_last on the CPU: oneDNN corrupts the
    heap on narrow channels_last convolutions with torch 2.14.1 on AVX2 CPUs (docs/PLATFORM.md)."""
    if device.type != "cuda":
        return batch.to(device)
    batch = batch.pin_memory().to(device, non_blocking=True)
    return batch.contiguous(memory_format=memory_format(batch.ndim))


def make_optimizer(params, config: PhaseConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def steps_per_epoch(config: PhaseConfig, samples: int) -> int:
    """Steps of an epoch on a rank holding `samples` samples of the phase's data."""
    return config.steps_per_epoch or math.ceil(samples / config.batch_size)


def lr_at(config: PhaseConfig, epoch: int, step: int, steps: int) -> float:
    """The lr of a step (pure): linear warm-up over `warmup_epochs`, then the milestone factors
    (schedule "step"), or a cosine or linear decay over the rest of the phase that reaches zero at
    its last step (annealed at the end, as budgeted training wants it): a decayed phase keeps at least
    its last step out of the warm-up, so every phase, of one step or more, ends at lr 0."""
    t, warm, total = epoch * steps + step, round(config.warmup_epochs * steps), config.epochs * steps
    if config.schedule != "step":
        warm = min(warm, max(total - 2, 0))  # one step at the warmed-up lr, then the decay's last at zero
    lr = config.lr
    if t < warm:
        return lr * (t + 1) / warm
    if config.schedule == "step":
        for milestone, factor in zip(config.milestones, config.milestone_factors):
            if epoch >= milestone:
                lr *= factor
        return lr
    progress = min((t - warm) / (total - warm - 1), 1.0) if total - warm > 1 else 1.0  # 1 at the last step: lr 0
    return lr * (0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1 - progress)


def batch_indices(order_of: Callable[[int], list[int]], length: int, epoch: int, step: int, batch_size: int,
                  steps_fixed: int, peer: int = 0, peers: int = 1) -> list[int]:
    """Peer `peer`'s samples of a step. An epoch is one pass: `order_of(epoch)` is this peer's share
    of it (`length` samples). Or, with a fixed number of steps per epoch, `order_of(npass)` is a
    whole pass (`length` samples) and the passes are laid end to end: each step takes the next
    batch_size x peers of them, dealt round-robin as DistributedSampler deals a pass. Those are the
    same samples whatever the peer count that shares them, so a run resumed at another rank count
    with the same total batch (partition.elastic_batch) reads what it would have read."""
    if not steps_fixed:
        return order_of(epoch)[step * batch_size : (step + 1) * batch_size]
    start = (epoch * steps_fixed + step) * batch_size * peers + peer
    return [order_of(npass)[offset] for npass, offset in
            (divmod(start + peers * j, length) for j in range(batch_size))]


def step_seed(seed: int, epoch: int, step: int, peer: int = 0) -> int:
    """The seed of one step's randomness. Each peer of a data-parallel group draws its own
    augmentation and dropout; peer 0 (and a lone rank) keeps the seed of (seed, epoch, step)."""
    return int(np.random.SeedSequence([seed, epoch, step, *([peer] if peer else [])]).generate_state(1)[0])


def epoch_order(n: int, seed: int, epoch: int, group) -> list[int]:
    """This rank's sample order for an epoch: torch's DistributedSampler over the peers."""
    sampler = DistributedSampler(range(n), num_replicas=comm.group_size(group), rank=comm.group_rank(group),
                                 shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


def pass_order(n: int, seed: int, npass: int) -> list[int]:
    """The whole of pass `npass` in the order epoch_order deals it out to the peers (their
    interleaving): one permutation of the samples, the same whatever the peer count."""
    sampler = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(npass)
    return list(sampler)


def regroup_partial(partial: dict, peers: int) -> dict:
    """A stopped epoch's per-peer loss and sample sums carried to `peers` peers (a resume at another
    rank count): only their totals are read (the epoch's mean loss), so the first peer takes them."""
    if len(partial["loss"]) == peers:
        return partial
    return partial | {"loss": [float(sum(partial["loss"]))] + [0.0] * (peers - 1),
                      "seen": [sum(partial["seen"])] + [0] * (peers - 1)}


@torch.no_grad()
def evaluate(model: nn.Module, data: PhaseData, device: torch.device, task: Task = Task(), group=None,
             batch_size: int = EVAL_BATCH, precision: str = "fp32") -> dict:
    """Validation metrics, split over the group's ranks: top-1/top-5 for classification, MAE and
    RMSE for regression and autoencoders; the mean loss for all. The forward pass runs in
    `precision`, the metrics in fp32."""
    was_training = model.training
    model.eval()
    indices = np.asarray(shard_range(len(data.val), comm.group_rank(group), comm.group_size(group)))
    # loss, then top-1 hits and top-5 hits (classification) or |error| and error^2 sums, elements, samples;
    # on the host, as the outputs they count (gloo reduces CPU tensors beside NCCL's CUDA ones)
    sums = torch.zeros(5, dtype=torch.float64, device="cpu")
    for start in range(0, len(indices), batch_size):
        images, labels = data.val.read(indices[start : start + batch_size])
        x = make_batch(images, mean=data.mean, tile=data.tile, augment=False, generator=None)
        with autocast(device, precision):
            output = model(to_device(x, device))
        output = output.float().cpu()
        target = task.target(x, labels)
        loss = task.criterion(output, target, reduction="sum").item()
        if task.name == "classification":
            top = output.topk(min(5, output.shape[1]), dim=1).indices
            hits = [(top[:, 0] == target).sum().item(), (top == target[:, None]).any(dim=1).sum().item()]
            sums += torch.tensor([loss, *hits, len(target), len(target)], dtype=torch.float64, device="cpu")
        else:
            error = output - target.float().reshape(output.shape)
            sums += torch.tensor([loss, error.abs().sum().item(), error.pow(2).sum().item(), error.numel(),
                                  len(target)], dtype=torch.float64, device="cpu")
    comm.all_reduce_sum(sums, group)
    model.train(was_training)
    loss, first, second, elements, samples = sums.tolist()
    if task.name == "classification":
        return {"val_loss": loss / max(samples, 1), "val_accuracy": first / max(samples, 1),
                "val_top5": second / max(samples, 1), "val_samples": int(samples)}
    return {"val_loss": loss / max(elements, 1), "val_mae": first / max(elements, 1),
            "val_rmse": math.sqrt(second / max(elements, 1)), "val_samples": int(samples)}


def combine_moments(parts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, mean, M2) of the union of disjoint parts given as (count, mean, M2) each, M2 being the
    sum of squared deviations from the part's mean (per channel): Chan, Golub and LeVeque's
    parallel formula, M2 = sum_i M2_i + sum_i n_i (mean_i - mean)^2, exact where averaging the
    parts' variances would drop the spread of their means. Counts (tensors or Python numbers) are
    taken to the means' device: on a GPU a CPU count would meet CUDA means."""
    counts = torch.stack([torch.as_tensor(n, dtype=torch.float64, device=m.device) for n, m, _ in parts])
    means = torch.stack([m.double() for _, m, _ in parts])
    count = counts.sum(0)
    mean = (counts.reshape(-1, *[1] * (means.dim() - 1)) * means).sum(0) / count
    spread = (counts.reshape(-1, *[1] * (means.dim() - 1)) * (means - mean) ** 2).sum(0)
    return count, mean, torch.stack([m2.double() for _, _, m2 in parts]).sum(0) + spread


def _batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, mean, M2) per channel (dim 1) of one BatchNorm input, in float64, on its device."""
    x = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
    mean = x.mean(1)
    count = torch.tensor(float(x.shape[1]), dtype=torch.float64, device=x.device)
    return count, mean, ((x - mean[:, None]) ** 2).sum(1)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: PhaseData, device: torch.device, batches: int, batch_size: int,
                   seed: int = 0, group=None, precision: str = "fp32") -> bool:
    """Replace every BatchNorm's running statistics by the exact mean and (unbiased) variance of its
    input over `batches` training batches of every peer of the group (train-mode BN, no
    augmentation, no gradient): the statistics of the current weights on this phase's inputs, not
    an EMA of earlier weights (a few steps an epoch) or of the tiles the sub-networks saw. Batches
    and ranks are combined by combine_moments: the same statistics as one rank reading all the
    batches as one. Weights are untouched. Pass the bare network, not a data-parallel wrapper.
    Returns False when the network has no BatchNorm."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0:
        return False
    moments: dict[nn.Module, tuple] = {}

    def record(module, args):
        seen = _batch_moments(args[0])
        moments[module] = seen if module not in moments else combine_moments([moments[module], seen])

    hooks = [m.register_forward_pre_hook(record) for m in norms]
    was_training = model.training
    model.train()
    order = epoch_order(len(data.train), seed, 0, group)
    torch.manual_seed(seed)  # dropout, should the network have any
    ran = min(batches, math.ceil(len(order) / batch_size))
    try:
        for b in range(ran):
            images, _ = data.train.read(np.asarray(order[b * batch_size : (b + 1) * batch_size]))
            with autocast(device, precision):  # the statistics of the forward that evaluates
                model(to_device(make_batch(images, mean=data.mean, tile=data.tile, augment=False, generator=None),
                                device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    for m in norms:
        none = dict(dtype=torch.float64, device=m.running_mean.device)  # a rank with no batch: nothing seen
        count, mean, m2 = moments.get(m, (torch.zeros((), **none), torch.zeros(m.num_features, **none),
                                          torch.zeros(m.num_features, **none)))
        total = comm.all_reduce_sum(torch.cat([count.reshape(1), count * mean]), group)  # a rank may have no batch
        overall = total[1:] / total[0]
        m2 = comm.all_reduce_sum(m2 + count * (mean - overall) ** 2, group)  # combine_moments over the ranks
        m.running_mean.copy_(overall)
        m.running_var.copy_(m2 / (total[0] - 1).clamp(min=1))  # unbiased, as BatchNorm keeps it
        m.num_batches_tracked.fill_(ran)
    return True


def step_batch(job: Job, indices, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch of `indices` on `device`, augmented with the step's own generator."""
    data = job.data
    images, labels = data.train.read(np.asarray(indices))
    x = make_batch(images, mean=data.mean, tile=data.tile, augment=data.augment,
                   generator=torch.Generator().manual_seed(seed), max_shift=data.max_shift)
    return to_device(x, device), to_device(labels, device)


def train_step(job: Job, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, x: torch.Tensor,
               labels: torch.Tensor, lr: float, check: Callable[[torch.Tensor], None],
               poison: bool = False) -> tuple[torch.Tensor, bool]:
    """One optimizer step at `lr` (fit's, and what calibration times): (the detached loss, whether
    fp16's GradScaler skipped the step). `check(loss)` sees the loss before the backward pass and
    raises to stop; `poison` makes the loss NaN (the DDC_NAN_AT test hook)."""
    with autocast(x.device, job.precision):
        loss = job.task.criterion(job.model(x), job.task.target(x, labels)).float()
    if poison:
        loss = loss * float("nan")
    check(loss)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    for group in optimizer.param_groups:
        group["lr"] = lr
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)  # skips the step if fp16 gradients overflowed, then lowers the scale
    scaler.update()
    return loss.detach(), scale is not None and scaler.get_scale() < scale  # the scale drops only on a skip


def time_steps(job: Job, device: torch.device, steps: int, warmup: int, barrier: Callable[[], None]) -> float:
    """Seconds per training step of `job` (a throwaway network: its weights change), timed
    between `barrier()` calls after `warmup` untimed steps, so ranks that time together contend
    for the cores as they will in the phase."""
    optimizer, scaler = make_optimizer(job.model.parameters(), job.config), make_scaler(job, device)
    job.model.train()
    n = len(job.data.train)
    for i in range(warmup + steps):
        if i == warmup:
            barrier()
            tic = time.perf_counter()
        indices = [(i * job.config.batch_size + j) % n for j in range(job.config.batch_size)]
        x, labels = step_batch(job, indices, i, device)
        train_step(job, optimizer, scaler, x, labels, job.config.lr, check=lambda loss: None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - tic
    barrier()
    return seconds / max(steps, 1)


def time_evaluation(job: Job, device: torch.device, val_samples: int, barrier: Callable[[], None],
                    samples_per_peer: int = EVAL_BATCH) -> tuple[float, float]:
    """(seconds of the BN recalibration fit does before a score, seconds of one score of
    `val_samples` validation samples), the score timed on `samples_per_peer` a peer and scaled."""
    part = min(len(job.data.val), samples_per_peer * comm.group_size(job.group))
    sample = dataclasses.replace(job.data, val=job.data.val.subset(np.arange(part)))
    barrier()
    tic = time.perf_counter()
    if job.config.bn_recalibrate_batches:
        recalibrate_bn(job.module, job.data, device, job.config.bn_recalibrate_batches, job.config.batch_size,
                       job.seed, job.group, precision=job.precision)
    recalibration = time.perf_counter() - tic
    evaluate(job.model, sample, device, job.task, job.group, precision=job.precision)
    scoring = time.perf_counter() - tic - recalibration
    barrier()
    return recalibration, scoring * val_samples / max(part, 1)


def make_scaler(job: Job, device: torch.device) -> torch.amp.GradScaler:
    """fp16 only: scale the loss so small gradients do not flush to zero (bf16 has fp32's range)."""
    return torch.amp.GradScaler(device.type, enabled=job.precision == "fp16")


def evaluates_after(config: PhaseConfig, epoch: int) -> bool:
    """Whether the phase scores the network after `epoch` (0-based): every `eval_every` epochs and
    after the last (eval_every 0: after the last only)."""
    last = epoch + 1 == config.epochs
    return last or bool(config.eval_every and (epoch + 1) % config.eval_every == 0)


def fit(job: Job, device: torch.device, resume: dict | None = None) -> list[dict]:
    """Train `job.config.epochs` epochs (continuing from `resume`); returns the per-epoch history."""
    cfg, data, model = job.config, job.data, job.model
    optimizer = make_optimizer(model.parameters(), cfg)
    if resume is None and job.optimizer_state is not None:
        optimizer.load_state_dict(job.optimizer_state)
    scaler = make_scaler(job, device)
    # The lr of every step is lr_at(...) times plateau_factor once per cut of the plateau rule, whose
    # counters ReduceLROnPlateau keeps; a cut shows as a lower lr after its step() call.
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max" if job.task.higher_is_better else "min", factor=cfg.plateau_factor,
        patience=max(cfg.plateau_patience, 1))
    peer, peers = comm.group_rank(job.group), comm.group_size(job.group)
    start_epoch, start_step, cuts = 0, 0, 0
    # The epoch in progress, per peer, so a resumed epoch reports the very same loss.
    partial = {"loss": [0.0] * peers, "seen": [0] * peers, "seconds": 0.0}
    if resume is not None:
        job.module.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        plateau.load_state_dict(resume["plateau"])
        if scaler.is_enabled():
            scaler.load_state_dict(resume["scaler"])
        job.history = list(resume["history"])
        start_epoch, start_step, partial = resume["epoch"], resume["step"], regroup_partial(resume["partial"], peers)
        cuts = resume["plateau_cuts"]
        job.clock.resume_at(resume["elapsed"])

    lone = peers == 1

    def save(epoch: int, step: int, finished: bool = False) -> None:
        """The group's writer saves; its peers wait until the checkpoint is published, so that none
        runs ahead into a fault whose MPI Abort would kill the writer mid-write (and, after a stop
        signal, none leaves before the stop checkpoint exists)."""
        if job.slot is not None:
            state = {"model": job.module.state_dict(), "optimizer": optimizer.state_dict(),
                     "plateau": plateau.state_dict(), "plateau_cuts": cuts, "elapsed": job.clock(),
                     "scaler": scaler.state_dict(), "history": job.history, "epoch": epoch, "step": step, "partial": partial,
                     "finished": finished}
            comm.slow_write_point()
            job.slot.save(state, epoch=epoch, step=step, finished=finished, batch=cfg.batch_size * peers)
        if not lone:
            comm.wait_for_peers(job.group)

    phase_start = time.perf_counter()
    orders: dict[int, list[int]] = {}

    def order_of(npass: int) -> list[int]:
        if npass not in orders:
            for old in [p for p in orders if p < npass - 1]:  # a step spans at most two passes
                del orders[old]
            orders[npass] = (pass_order(len(data.train), job.seed, npass) if cfg.steps_per_epoch
                             else epoch_order(len(data.train), job.seed, npass, job.group))
        return orders[npass]

    length = len(order_of(0))
    steps = steps_per_epoch(cfg, length)
    streak = 0  # non-finite losses in a row, across epochs

    def check(loss: torch.Tensor) -> None:  # before the backward pass of epoch `epoch`, step `step`
        nonlocal streak
        streak, stop = nonfinite_streak(bool(torch.isfinite(loss)), scaler.is_enabled(), streak)
        if stop:
            raise NonFiniteLoss(
                f"phase {job.name}, epoch {epoch + 1}, step {step + 1}, rank {job.rank}: "
                f"the loss is {loss.item()}" + (f" for {streak} steps in a row (fp16: GradScaler skipped them "
                                               "and did not recover)" if scaler.is_enabled() else "")
                + f"; lower {job.name.split('_')[0]}.lr or check the data (the last good checkpoint is kept)")

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        tic = time.perf_counter()
        resumed = epoch == start_epoch and start_step > 0
        loss_sum = torch.tensor(partial["loss"][peer] if resumed else 0.0, dtype=torch.float64, device="cpu")
        seen = partial["seen"][peer] if resumed else 0
        earlier_seconds = partial["seconds"] if resumed else 0.0
        skipped = partial.get("skipped", 0) if resumed else 0  # fp16 steps GradScaler skipped this epoch
        first_step = start_step if epoch == start_epoch else 0
        progress = _Progress(job, epoch, steps, first_step, seen, tic)
        for step in range(first_step, steps):
            seed = step_seed(job.seed, epoch, step, peer)
            torch.manual_seed(seed)  # dropout and any other global-RNG use
            x, labels = step_batch(job, batch_indices(order_of, length, epoch, step, cfg.batch_size,
                                                      cfg.steps_per_epoch, peer, peers), seed, device)
            loss, was_skipped = train_step(job, optimizer, scaler, x, labels,
                                           lr_at(cfg, epoch, step, steps) * cfg.plateau_factor ** cuts, check,
                                           poison=comm.nan_point(job.name, epoch + 1, step + 1))
            skipped += was_skipped
            if bool(torch.isfinite(loss)):  # a skipped step's loss is not part of the epoch's mean
                loss_sum += loss.double().cpu() * len(labels)
                seen += len(labels)
            progress(step, seen)
            comm.signal_point(job.name, epoch + 1, step + 1)
            if comm.stop_requested() if lone else comm.any_stop_requested(job.group):
                partial = {"loss": comm.all_gather_float(loss_sum.item(), job.group),
                           "seen": [int(n) for n in comm.all_gather_float(seen, job.group)],
                           "seconds": earlier_seconds + time.perf_counter() - tic, "skipped": skipped}
                save(epoch, step + 1)
                raise comm.Preempted(f"stop signal in phase {job.name} at epoch {epoch + 1}, step {step + 1}: "
                                     "checkpoint written")
        progress.close()
        train_seconds = earlier_seconds + time.perf_counter() - tic
        metrics = {}
        if evaluates_after(cfg, epoch):
            if cfg.bn_recalibrate_batches:
                recalibrate_bn(job.module, data, device, cfg.bn_recalibrate_batches, cfg.batch_size, job.seed,
                               job.group, precision=job.precision)
            metrics = evaluate(model, data, device, job.task, job.group, precision=job.precision)
        totals = comm.all_reduce_sum(torch.tensor([loss_sum.item(), seen], dtype=torch.float64, device="cpu"),
                                     job.group)
        samples = int(totals[1].item())
        row = {"phase": job.name, "epoch": epoch + 1, "loss": totals[0].item() / max(samples, 1), **metrics,
               "lr": optimizer.param_groups[0]["lr"], "train_seconds": train_seconds, "train_samples": samples,
               "seconds": earlier_seconds + time.perf_counter() - tic, "elapsed": job.clock(),
               "images_per_second": samples / max(train_seconds, 1e-9), "skipped_steps": skipped}
        job.history.append(row)
        if cfg.plateau_patience and metrics:
            before = optimizer.param_groups[0]["lr"]
            plateau.step(metrics[job.task.metric])
            cuts += optimizer.param_groups[0]["lr"] < before
        job.log(_progress_line(row, cfg.epochs, time.perf_counter() - phase_start, epoch + 1 - start_epoch))
        last = epoch + 1 == cfg.epochs
        if last or (job.checkpoint_every and (epoch + 1) % job.checkpoint_every == 0):
            save(epoch + 1, 0, finished=last)
    job.optimizer_state = optimizer.state_dict()
    return job.history


class _Progress:
    """Progress within a long epoch: on a terminal, rank 0's tqdm bar; otherwise (a SLURM log) a line
    (step, images/s, ETA) at most every job.progress_seconds, so that minutes-long epochs are not
    silent and a log is never flooded."""

    def __init__(self, job: Job, epoch: int, steps: int, first_step: int, seen: int, tic: float):
        self.job, self.epoch, self.steps, self.first_step, self.seen, self.tic = job, epoch, steps, first_step, seen, tic
        self.last = tic
        self.peers = comm.group_size(job.group)
        self.bar = None
        if job.progress_seconds and job.rank == 0 and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=first_step, desc=f"[{job.name}] epoch {epoch + 1}", unit="step",
                            leave=False, file=sys.stdout)

    def __call__(self, step: int, seen: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.perf_counter()
        if not self.job.progress_seconds or now - self.last < self.job.progress_seconds or step + 1 == self.steps:
            return
        self.last, elapsed = now, now - self.tic
        rate = (seen - self.seen) * self.peers / max(elapsed, 1e-9)
        eta = elapsed / (step + 1 - self.first_step) * (self.steps - step - 1)
        self.job.log(f"[{self.job.name}] epoch {self.epoch + 1}/{self.job.config.epochs}  step {step + 1}/{self.steps}"
                     f"  {rate:.0f} img/s  epoch ETA {eta:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_line(row: dict, epochs: int, elapsed: float, done_here: int) -> str:
    eta = elapsed / max(done_here, 1) * (epochs - row["epoch"])
    return (f"[{row['phase']}] epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  "
            f"{_metric_text(row)}  lr {row['lr']:.2g}  {row['seconds']:.1f} s  "
            f"{row['images_per_second']:.0f} img/s  ETA {eta:.0f} s")


def _metric_text(row: dict) -> str:
    if not any(key.startswith("val_") for key in row):
        return "(not evaluated)"
    if "val_accuracy" in row:
        return f"val {100 * row['val_accuracy']:.2f}%"
    return f"val rmse {row['val_rmse']:.4g}  mae {row['val_mae']:.4g}"
