"""Issue 13.1: how close the sub phase comes to its FLOP ceiling, by width and sub-phase batch size.

The ceiling of the epoch ratio (global epoch / sub epoch on the same R ranks) is the FLOP ratio
(global net / sub-network, per image) divided by R: each sub-network sees every image, the global
phase splits them over R ranks. The fraction of the ceiling reached is then the per-image time
ratio over the FLOP ratio:

    fraction = (global s per image / sub s per image) / (global FLOPs / sub FLOPs)

Side by side in one `mpiexec -n 4` run, rounds interleaving every configuration: the sub phase as
rank r training sub-network r on tile r alone (16x16 tiles, K = 4), the global phase as torch DDP
over gloo, both with the project's code paths (build_model, make_batch on real CIFAR-10 batches,
Adam), each timed as S steps between two barriers after one warm-up step. With --compile each
sub-network configuration is also timed through torch.compile (inductor, as `sub.compile =
"inductor"` does; compiled in the warm-up step, outside the timing), side by side with the eager
one; the global net stays eager (compiling it measured no faster).

    python benchmarks/bench_ceiling.py [--model cifar_resnet20] [--widths 16 32 64]
        [--sub-batches 64 128 256] [--global-batch 32] [--rounds 2] [--compile] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_NPZ, SHARED_SOURCE, load, machine, median, record, run_worker, time_steps  # noqa: E402

sys.path.insert(0, str(REPO))

HEADING = "## Sub phase against its FLOP ceiling (issue 13.1)"
HEADING_COMPILED = "## Sub phase against its FLOP ceiling, sub-networks compiled (issue 13.1)"


def worker(args) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from ddc_hpc import build_model, comm
    from ddc_hpc.data import load_dataset, make_batch
    from ddc_hpc.partition import tile_slices

    world = comm.init_world()
    comm.configure_threads(world, 0, False)
    comm.init_distributed(world, "gloo")
    source = SHARED_SOURCE if SHARED_NPZ.exists() else "synthetic"
    data = load_dataset(source, num_classes=10, val_fraction=0.1, seed=0, limit=4096)
    tile = tile_slices(32, 32, (2, 2), 0)[world.rank % 4]
    rng = np.random.default_rng(world.rank)

    def per_image(phase: str, width: int, batch: int) -> float:
        torch.manual_seed(world.rank)
        sub = phase != "global"
        model = build_model(args.model, 10, partitions=4 if sub else 1, width=width)
        if phase == "compiled sub":
            model.compile()
        if not sub:
            model = DistributedDataParallel(model)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        steps = args.sub_steps if sub else args.global_steps

        def step(i: int) -> None:
            images, labels = data.train.read(np.sort(rng.choice(len(data.train), batch, replace=False)))
            x = make_batch(images, mean=data.mean, tile=tile if sub else None, augment=True,
                           generator=torch.Generator().manual_seed(i), max_shift=2)
            loss = F.cross_entropy(model(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return time_steps(step, steps, world) / batch

    configs = [("global", w, args.global_batch) for w in args.widths]
    configs += [(sub, w, b) for w in args.widths for b in args.sub_batches
                for sub in ("sub", "compiled sub")[: 1 + args.compile]]
    rounds, loads = [], [load()]
    for r in range(args.rounds):
        row = {}
        for phase, width, batch in configs:
            key = f"{phase} w{width} b{batch}"
            row[key] = per_image(phase, width, batch)
            if world.is_root:
                print(f"round {r + 1}: {key}: {1e3 * row[key]:.2f} ms/image", flush=True)
        rounds.append(row)
        loads.append(load())
    if world.is_root:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "loads": loads, "args": vars(args), "data": source},
                                              indent=1))
    comm.shutdown_distributed()


def flop_ratio(model: str, width: int) -> float:
    from ddc_hpc import build_model
    from ddc_hpc.sizes import count_flops

    return (count_flops(build_model(model, 10, width=width), (3, 32, 32))
            / count_flops(build_model(model, 10, partitions=4, width=width), (3, 16, 16)))


def table(res: dict) -> list[str]:
    args, rounds = res["args"], res["rounds"]
    rows = ["| width (sub-networks) | FLOP ratio | ceiling (/ 4 ranks) | sub batch | sub ms/image | global ms/image "
            f"(batch {args['global_batch']}) | epoch ratio | **fraction of ceiling** (median, range) |",
            "|---|---|---|---|---|---|---|---|"]
    for width in args["widths"]:
        flops = flop_ratio(args["model"], width)
        glob = [r[f"global w{width} b{args['global_batch']}"] for r in rounds]
        for batch, kind in [(b, k) for b in args["sub_batches"] for k in ("sub", "compiled sub")]:
            if f"{kind} w{width} b{batch}" not in rounds[0]:
                continue
            sub = [r[f"{kind} w{width} b{batch}"] for r in rounds]
            fractions = [g / s / flops for g, s in zip(glob, sub)]
            label = f"{batch}" + " compiled" * (kind == "compiled sub")
            rows.append(f"| {width} ({width // 4}/{width // 2}/{width}) | {flops:.1f} | {flops / 4:.2f} | {label} "
                        f"| {1e3 * median(sub):.2f} | {1e3 * median(glob):.2f} | {median(glob) / median(sub) / 4:.2f} "
                        f"| **{median(fractions):.2f}** ({min(fractions):.2f}-{max(fractions):.2f}) |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--sub-batches", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sub-steps", type=int, default=4)
    p.add_argument("--global-steps", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="sub-networks through torch.compile (inductor)")
    p.add_argument("--write", action="store_true", help="record the table in benchmarks/RESULTS.md")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    passed = [a for a in sys.argv[1:] if a != "--write"]
    res = run_worker(__file__, "ceiling" + "_compiled" * args.compile, 4, passed)
    rows = table(res)
    print("\n".join(rows))
    if args.write:
        command = "python benchmarks/bench_ceiling.py " + " ".join(passed)
        record(HEADING_COMPILED if args.compile else HEADING, [f"Command: `{command.strip()}`; machine: {machine()}; load before/after rounds: "
                         f"{res['loads']}; data: {res['data']}.", "", *rows])


if __name__ == "__main__":
    main()
