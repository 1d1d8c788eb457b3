"""Issue 13.1: a rank's sub-networks trained fused in one pass against one after the other.

With R ranks < K sub-networks a rank holds K/R of them, and the sub phase trains them in sequence
(ddc_hpc.phases.sub_phase over partition.subnets_of_rank). Fused, the rank's G = K/R members are one
"ensemble" in torch.func's recipe: `stack_module_state` stacks their parameters and buffers,
`vmap(functional_call)` runs them in one pass, each member on its own batch (a stacked
[G, B, C, H, W] batch, in_dims=0: its own images cut to its own tile), BatchNorm in train mode
with the running statistics stacked as buffers (updated in place, per member, under vmap), the
members' cross-entropy losses summed (each member's gradient is its own loss's) and one Adam over
the stacked parameters: Adam is elementwise, so this is one Adam per member. tests/test_fused.py
checks the fused update equals separate training.

Side by side in one `mpiexec -n 2` run, each rank holding 2 of K = 4 sub-networks (16x16 tiles),
rounds interleaving every configuration and, within a configuration, alternating which of the two
goes first: sequential (each member its own forward, backward and Adam step, as the pipeline does)
and fused (one vmapped step). Both start from the same initial weights and draw the same real
CIFAR-10 batches (make_batch, augmented; synthetic images where the shared npz is missing), batch
preparation included in both; each is timed as S steps of all members between two barriers after
one warm-up step. A ratio sequential / fused > 1 means fused is faster.

    python benchmarks/bench_fused.py [--model cifar_resnet20] [--widths 16 32 64]
        [--sub-batches 64] [--rounds 2] [--steps 3] [--device cpu|cuda] [--write]

With --device cuda (tools/gpu_check.sh's `fused` check) both ranks share the GPU and every timed
step ends with torch.cuda.synchronize(), so the clock sees the kernels, not their launch.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_NPZ, SHARED_SOURCE, load, machine, median, record, run_worker, time_steps  # noqa: E402

sys.path.insert(0, str(REPO))

HEADING = "## Fused training of a rank's sub-networks (issue 13.1)"
RANKS, PARTITIONS = 2, 4


class Fused:
    """G models of one architecture trained as one: stacked parameters and buffers, a vmapped
    forward, the members' losses summed, one Adam over the stacked parameters."""

    def __init__(self, models, lr: float = 1e-3):
        import torch
        from torch.func import stack_module_state

        self.params, self.buffers = stack_module_state(list(models))  # params: new leaves, requires_grad
        self.base = copy.deepcopy(models[0]).to("meta")  # the architecture only: no memory
        self.base.train()
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr)
        self.forward = torch.vmap(self._call, in_dims=(0, 0, 0))

    def _call(self, params, buffers, x):
        from torch.func import functional_call

        return functional_call(self.base, (params, buffers), (x,))

    def step(self, x, labels):
        """One Adam step of every member: `x` [G, B, ...], member g's batch x[g] with labels[g]."""
        import torch.nn.functional as F

        out = self.forward(self.params, self.buffers, x)  # [G, B, classes]
        losses = F.cross_entropy(out.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape).mean(1)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach()

    def state_dict(self, g: int) -> dict:
        """Member g's parameters and buffers, named as in its own model's state_dict."""
        return {n: t[g].detach() for n, t in {**self.params, **self.buffers}.items()}


def sequential_step(models, optimizers, x, labels):
    """The pipeline's way: each member its own forward, backward and Adam step, one after the other."""
    import torch
    import torch.nn.functional as F

    losses = []
    for model, optimizer, xg, yg in zip(models, optimizers, x, labels):
        loss = F.cross_entropy(model(xg), yg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def worker(args) -> None:
    import numpy as np
    import torch

    from ddc_hpc import build_model, comm
    from ddc_hpc.data import load_dataset, make_batch
    from ddc_hpc.partition import subnets_of_rank, tile_slices

    world = comm.init_world()
    comm.configure_threads(world, 0, False)
    comm.init_distributed(world, "gloo")  # for the barriers only: the sub phase itself never talks
    source = SHARED_SOURCE if SHARED_NPZ.exists() else "synthetic"
    data = load_dataset(source, num_classes=10, val_fraction=0.1, seed=0, limit=4096)
    mine = subnets_of_rank(world.rank, world.size, PARTITIONS)
    tiles = [tile_slices(32, 32, (2, 2), 0)[k] for k in mine]

    def batches(seed: int, batch: int):
        """Step i's batch of every member: its own images, cut to its own tile; the same for both modes."""
        rngs = [np.random.default_rng(seed * 100 + k) for k in mine]

        def draw(i: int):
            xs, ys = [], []
            for rng, tile in zip(rngs, tiles):
                images, labels = data.train.read(np.sort(rng.choice(len(data.train), batch, replace=False)))
                xs.append(make_batch(images, mean=data.mean, tile=tile, augment=True,
                                     generator=torch.Generator().manual_seed(i), max_shift=2))
                ys.append(torch.as_tensor(labels))
            return torch.stack(xs), torch.stack(ys)
        return draw

    device = torch.device(args.device)

    def on_device(draw):
        def drawn(i: int):
            return tuple(t.to(device) for t in draw(i))
        return drawn

    def synchronised(step):
        def timed(i: int) -> None:
            step(i)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return timed

    def per_step(mode: str, width: int, batch: int, seed: int) -> float:
        torch.manual_seed(world.rank)
        models = [build_model(args.model, 10, partitions=PARTITIONS, width=width).to(device) for _ in mine]
        draw = on_device(batches(seed, batch))
        if mode == "fused":
            fused = Fused(models)

            def step(i: int) -> None:
                fused.step(*draw(i))
        else:
            optimizers = [torch.optim.Adam(m.parameters(), 1e-3) for m in models]

            def step(i: int) -> None:
                sequential_step(models, optimizers, *draw(i))
        return time_steps(synchronised(step), args.steps, world)

    configs = [(w, b) for w in args.widths for b in args.sub_batches]
    rounds, loads = [], [load()]
    for r in range(args.rounds):
        row = {}
        for width, batch in configs:
            modes = ("sequential", "fused") if r % 2 == 0 else ("fused", "sequential")
            for mode in modes:
                key = f"{mode} w{width} b{batch}"
                row[key] = per_step(mode, width, batch, seed=r)
                if world.is_root:
                    print(f"round {r + 1}: {key}: {1e3 * row[key]:.1f} ms/step", flush=True)
        rounds.append(row)
        loads.append(load())
    if world.is_root:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "loads": loads, "args": vars(args), "data": source,
                                               "members_per_rank": len(mine), "device": str(device)}, indent=1))
    comm.shutdown_distributed()


def table(res: dict) -> list[str]:
    """Per configuration: ms per step of all the rank's members, sequential and fused (median over
    rounds), and the per-round ratio sequential / fused (median, range)."""
    args, rounds, g = res["args"], res["rounds"], res["members_per_rank"]
    rows = [f"| width (sub-networks) | sub batch per member | sequential ms/step ({g} members) | fused ms/step "
            "| **sequential / fused** (median, range) |",
            "|---|---|---|---|---|"]
    for width in args["widths"]:
        for batch in args["sub_batches"]:
            seq = [r[f"sequential w{width} b{batch}"] for r in rounds]
            fus = [r[f"fused w{width} b{batch}"] for r in rounds]
            ratios = [s / f for s, f in zip(seq, fus)]
            rows.append(f"| {width} ({width // 4}/{width // 2}/{width}) | {batch} | {1e3 * median(seq):.1f} "
                        f"| {1e3 * median(fus):.1f} | **{median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f}) |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--sub-batches", type=int, nargs="+", default=[64])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both ranks train (cuda: one GPU shared)")
    p.add_argument("--write", action="store_true", help="record the table in benchmarks/RESULTS.md")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    passed = [a for a in sys.argv[1:] if a != "--write"]
    res = run_worker(__file__, "fused", RANKS, passed)
    rows = table(res)
    print("\n".join(rows))
    if args.write:
        command = "python benchmarks/bench_fused.py " + " ".join(passed)
        record(HEADING, [f"Command: `{command.strip()}`; {RANKS} ranks, each holding {res['members_per_rank']} of "
                         f"K = {PARTITIONS} sub-networks; machine: {machine()}; load before/after rounds: "
                         f"{res['loads']}; data: {res['data']}.", "", *rows])


if __name__ == "__main__":
    main()
