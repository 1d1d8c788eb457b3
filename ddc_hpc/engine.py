"""MPI-native data parallelism (`run.backend = "mpi4py"`): Horovod-style, for torch builds without
an MPI backend (every PyPI wheel).

`MPIDataParallel(module, world)` wraps a network the way `DistributedDataParallel` does and gives
the fit loop the same interface: `model(x)`, `.module`, `.parameters()`, `.train()`/`.eval()`,
`state_dict()` (keys prefixed `module.`, as DDP's); the loop saves `model.module.state_dict()`.

* At construction rank 0's parameters and buffers are broadcast to every rank (one Ibcast per
  dtype), after checking that all ranks hold the same parameter shapes.
* Gradients are fused into buckets (default 25 MB, the first 1 MB, as DDP), in reverse
  registration order (≈ the order backward produces them). A `register_post_accumulate_grad_hook`
  copies each gradient, divided by the world size, into its bucket; the moment a bucket is full
  its `Iallreduce` (sum) starts, so communication overlaps the rest of the backward pass. Buckets
  start in the same order on every rank (an MPI rule for nonblocking collectives): a bucket that
  fills early waits for the ones before it. Each hook also pokes MPI's progress engine.
* At the end of `loss.backward()` an autograd callback (queued by the first hook, as DDP does)
  starts any bucket left (parameters that got no gradient contribute zeros), waits for all of them
  with `run.collective_timeout` as the deadline (comm.CollectiveTimeout, raised out of backward),
  and writes the averages into `p.grad`. Each bucket ends with one "used" flag per parameter,
  summed with the gradients: a parameter that no rank used keeps its `p.grad` untouched (None
  after `zero_grad(set_to_none=True)`), as DDP leaves it, so the optimizer skips it. So **the loop needs no extra call**: after `backward()`
  returns, the gradients are averaged and `optimizer.step()` may run.
* Buffers (BatchNorm running statistics) follow DDP's `broadcast_buffers=True`: rank 0's buffers
  are broadcast before a forward pass when the previous forward ran with gradients enabled (and
  before the very first one) — in practice before every training forward and before the first
  evaluation forward after training. The others update their copies locally in between, which the
  next broadcast overwrites.
* `close()` removes the hooks and frees the private communicator: the pipeline calls it where a
  phase's training with the engine ends (phases.release).

Only ddc_hpc.comm touches MPI: the engine uses comm.start_allreduce / start_bcast / progress / wait_all
on a private communicator (comm.data_parallel_world). On a GPU the buckets are staged through host
memory (MPI libraries built without CUDA support are the common case); this path is written but
has not run on a GPU here (no GPU on the build machines).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import comm

DEFAULT_BUCKET_MB = 25.0
DEFAULT_FIRST_BUCKET_MB = 1.0


def plan_buckets(sizes_bytes: list[int], cap_bytes: float, first_cap_bytes: float | None = None) -> list[list[int]]:
    """Pure: group consecutive items (in the given order) into buckets of at most `cap_bytes`
    (the first at most `first_cap_bytes`); an item larger than the cap gets a bucket of its own."""
    buckets, current, used = [], [], 0
    cap = cap_bytes if first_cap_bytes is None else first_cap_bytes
    for i, size in enumerate(sizes_bytes):
        if current and used + size > cap:
            buckets.append(current)
            current, used, cap = [], 0, cap_bytes
        current.append(i)
        used += size
    if current:
        buckets.append(current)
    return buckets


def _wire_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a gradient travels in: float64 stays, everything else is summed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class _Bucket:
    params: list[int]  # indices into MPIDataParallel._params
    offsets: list[int]
    flags: int  # offset of the per-parameter "used" flags after the gradients
    flat: torch.Tensor  # on the parameters' device
    host: np.ndarray  # what MPI sees: flat's memory on the CPU, a staging copy on a GPU
    pending: int = 0
    request: object = None


@dataclass
class EngineStats:
    """What the benchmarks read: how much overlapped, how long the final wait took."""

    steps: int = 0
    buckets_started_in_backward: int = 0  # started by a hook, before backward ended
    buckets_started_at_end: int = 0
    wait_seconds: float = 0.0  # in the end-of-backward wait
    buffer_syncs: int = 0
    buckets: list[int] = field(default_factory=list)  # bytes per bucket


class MPIDataParallel(nn.Module):
    """Data parallel over MPI: see the module docstring."""

    def __init__(self, module: nn.Module, world: comm.World, *, ranks: list[int] | None = None,
                 bucket_cap_mb: float = DEFAULT_BUCKET_MB, first_bucket_mb: float = DEFAULT_FIRST_BUCKET_MB,
                 broadcast_buffers: bool = True):
        super().__init__()
        self.module = module
        # A private communicator (over `ranks` if given: only they construct this engine).
        self._world = comm.data_parallel_world(world, ranks)
        self._size = self._world.size
        self._broadcast_buffers = broadcast_buffers
        self._params = [p for p in module.parameters() if p.requires_grad]
        shapes = [(tuple(p.shape), str(p.dtype)) for p in module.parameters()]
        comm.agree(self._world, shapes, "the model's parameter shapes (every rank must build the same network)")
        self._sync_state(list(module.parameters()) + list(module.buffers()), "broadcasting the initial weights")

        order = list(reversed(range(len(self._params))))
        sizes = [self._params[i].numel() * self._params[i].element_size() for i in order]
        self._buckets: list[_Bucket] = []
        self._where: dict[int, tuple[int, int, int]] = {}  # param index -> (bucket, offset, place in bucket)
        for group in self._split_by_kind([order[j] for j in b] for b in plan_buckets(
                sizes, bucket_cap_mb * 2**20, first_bucket_mb * 2**20)):
            self._add_bucket(group)
        self.stats = EngineStats(buckets=[b.flat.numel() * b.flat.element_size() for b in self._buckets])

        self._ready = [False] * len(self._params)
        self._next = 0  # buckets start strictly in index order, the same on every rank
        self._in_backward = False
        self._reduce_this_backward = True
        self._sync_buffers_next = True  # DDP's require_forward_param_sync, initially True
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(self._params)]

    # ---- construction helpers

    def _split_by_kind(self, buckets):
        """A bucket holds one wire dtype on one device: split planned buckets where that changes."""
        for bucket in buckets:
            run, kind = [], None
            for i in bucket:
                p = self._params[i]
                here = (_wire_dtype(p.dtype), p.device)
                if run and here != kind:
                    yield run
                    run = []
                run.append(i)
                kind = here
            if run:
                yield run

    def _add_bucket(self, indices: list[int]) -> None:
        first = self._params[indices[0]]
        offsets, total = [], 0
        for i in indices:
            offsets.append(total)
            total += self._params[i].numel()
        flags, total = total, total + len(indices)
        flat = torch.zeros(total, dtype=_wire_dtype(first.dtype), device=first.device)
        host = flat.numpy() if flat.device.type == "cpu" else np.zeros(total, dtype=np.float64 if flat.dtype == torch.float64 else np.float32)
        index = len(self._buckets)
        for j, (i, off) in enumerate(zip(indices, offsets)):
            self._where[i] = (index, off, j)
        self._buckets.append(_Bucket(params=indices, offsets=offsets, flags=flags, flat=flat, host=host,
                                     pending=len(indices)))

    # ---- state broadcasts

    @torch.no_grad()
    def _sync_state(self, tensors: list[torch.Tensor], what: str) -> None:
        """Rank 0's values of `tensors` on every rank: one Ibcast per dtype, then one wait."""
        if self._size == 1 or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        packed, requests = [], []
        for dtype, group in by_dtype.items():
            # bool/bfloat16 and the like travel as bytes; numpy has no bfloat16
            flat = torch.cat([t.detach().reshape(-1) for t in group]).cpu()
            raw = flat.view(torch.uint8) if dtype in (torch.bfloat16, torch.bool) else flat
            host = raw.numpy()
            packed.append((group, flat, host))
            requests.append(comm.start_bcast(self._world, host))
        comm.wait_all(self._world, requests, what)
        if self._world.rank != 0:
            for group, flat, _host in packed:
                offset = 0
                for t in group:
                    n = t.numel()
                    t.copy_(flat[offset : offset + n].view_as(t))
                    offset += n

    # ---- forward

    def forward(self, *args, **kwargs):
        if self._broadcast_buffers and self._sync_buffers_next:
            buffers = list(self.module.buffers())
            if buffers:
                self._sync_state(buffers, "broadcasting BatchNorm buffers from rank 0")
                self.stats.buffer_syncs += 1
        grad = torch.is_grad_enabled()
        self._reduce_this_backward = grad
        self._sync_buffers_next = grad
        return self.module(*args, **kwargs)

    # ---- backward: hooks, buckets, the end-of-backward wait

    def _make_hook(self, i: int):
        def hook(param: torch.Tensor) -> None:
            self._on_grad(i, param)

        return hook

    def _on_grad(self, i: int, param: torch.Tensor) -> None:
        if not self._reduce_this_backward or self._size == 1:
            return
        if not self._in_backward:
            self._in_backward = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
        if self._ready[i]:
            raise RuntimeError(
                "a parameter received its gradient twice in one backward pass (reentrant backward or "
                "a parameter used in two graphs); MPIDataParallel reduces each gradient once a backward")
        b, off, j = self._where[i]
        bucket = self._buckets[b]
        n = param.numel()
        with torch.no_grad():  # divided before the sum, as DDP does
            bucket.flat[off : off + n].copy_(param.grad.reshape(-1)).div_(self._size)
            bucket.flat[bucket.flags + j] = 1
        self._ready[i] = True
        bucket.pending -= 1
        if bucket.pending == 0 and b == self._next:
            self._start_ready()
        else:
            comm.progress(self._in_flight())

    def _in_flight(self) -> list:
        return [self._buckets[b].request for b in range(self._next)]

    def _start(self, bucket: _Bucket) -> None:
        if bucket.flat.device.type != "cpu":
            bucket.host[:] = bucket.flat.numpy(force=True)  # synchronises with the device
        bucket.request = comm.start_allreduce(self._world, bucket.host)
        self._next += 1

    def _start_ready(self) -> None:
        while self._next < len(self._buckets) and self._buckets[self._next].pending == 0:
            self._start(self._buckets[self._next])
            self.stats.buckets_started_in_backward += 1

    def _end_of_backward(self) -> None:
        """Start what is left (zeros for parameters without a gradient), wait, write p.grad of
        every parameter that some rank used."""
        try:
            for b in range(self._next, len(self._buckets)):
                bucket = self._buckets[b]
                if bucket.pending:
                    for j, (i, off) in enumerate(zip(bucket.params, bucket.offsets)):
                        if not self._ready[i]:
                            bucket.flat[off : off + self._params[i].numel()].zero_()
                            bucket.flat[bucket.flags + j] = 0
                self._start(bucket)
                self.stats.buckets_started_at_end += 1
            tic = time.perf_counter()
            comm.wait_all(self._world, [b.request for b in self._buckets], "allreduce of gradient buckets")
            self.stats.wait_seconds += time.perf_counter() - tic
            with torch.no_grad():
                for bucket in self._buckets:
                    if bucket.flat.device.type != "cpu":
                        bucket.flat.copy_(torch.from_numpy(bucket.host))
                    used = bucket.flat[bucket.flags :].tolist()
                    for i, off, users in zip(bucket.params, bucket.offsets, used):
                        if not users:
                            continue
                        p = self._params[i]
                        average = bucket.flat[off : off + p.numel()].view_as(p)
                        if p.grad is None:
                            p.grad = average.to(p.dtype, copy=True)
                        else:
                            p.grad.copy_(average)
            self.stats.steps += 1
        finally:
            self._reset()

    def _reset(self) -> None:
        self._in_backward = False
        self._next = 0
        self._ready = [False] * len(self._params)
        for bucket in self._buckets:
            bucket.pending = len(bucket.params)
            bucket.request = None

    def close(self) -> None:
        """Remove the hooks and free the private communicator (the module is left as it was)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        comm.free_world(self._world)
