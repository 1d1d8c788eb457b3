"""Issue 13.1: torch.compile as an opt-in for training speed on CPU, measured against eager.

Side by side in one `mpiexec -n R` run (R = 4 by default, 1 thread a rank as the pipeline sets
them), the two training steps of bench_ceiling.py, each once in eager mode and once with the
model compiled (`model.compile(mode=...)`: inductor, default mode unless `--modes` says more):

* sub: rank r trains sub-network r of cifar_resnet20 (partitions 4, width 64 -> sub-network
  stage widths 16/32/64) on its 16x16 tile, sub batch 64, Adam;
* global: the whole network (width 64), batch 32 a rank, torch DDP over gloo. The module is
  compiled before DDP wraps it (`model.compile(); DistributedDataParallel(model)`), as torch's
  "Where to apply torch.compile?" page recommends; DDP itself is not compiled.

Every model is built and compiled once; its first step (compilation of forward and backward,
between two barriers, so the slowest rank counts) is reported as the first-step time. Then the
rounds interleave the modes (the order alternating from round to round), each timed with
common.time_steps (a warm-up step, barrier, S steps, barrier). Reported: ms per image, and the
ratio eager / compiled within each round (> 1: compiled faster), median and range over rounds.
The inductor cache is a fresh temporary folder unless `--cache-dir` names one, so the first-step
times are those of a first run on a node (a batch job on a fresh node pays them).

    python benchmarks/bench_compile.py [--ranks 4] [--phases sub global] [--modes default]
        [--rounds 3] [--sub-steps 4] [--global-steps 2] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_NPZ, SHARED_SOURCE, load, machine, median, record, run_worker, time_steps  # noqa: E402

sys.path.insert(0, str(REPO))

HEADING = "## torch.compile on CPU (issue 13.1)"
BATCH = {"sub": "sub_batch", "global": "global_batch"}


def worker(args) -> None:
    if args.cache_dir:  # before torch reads its configuration
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache_dir
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from ddc_hpc import build_model, comm
    from ddc_hpc.data import load_dataset, make_batch
    from ddc_hpc.partition import tile_slices

    world = comm.init_world()
    threads = comm.configure_threads(world, 0, False)
    comm.init_distributed(world, "gloo")
    source = SHARED_SOURCE if SHARED_NPZ.exists() else "synthetic"
    data = load_dataset(source, num_classes=10, val_fraction=0.1, seed=0, limit=4096)
    tile = tile_slices(32, 32, (2, 2), 0)[world.rank % 4]
    rng = np.random.default_rng(world.rank)

    def build(phase: str, mode: str):
        """The step function of (phase, mode) and the seconds of its first step, or the error."""
        torch.manual_seed(world.rank)
        batch = getattr(args, BATCH[phase])
        model = build_model(args.model, 10, partitions=4 if phase == "sub" else 1, width=args.width)
        if mode != "eager":
            model.compile(mode=None if mode == "default" else mode)
        if phase == "global":
            model = DistributedDataParallel(model)
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)

        def step(i: int) -> None:
            images, labels = data.train.read(np.sort(rng.choice(len(data.train), batch, replace=False)))
            x = make_batch(images, mean=data.mean, tile=tile if phase == "sub" else None, augment=True,
                           generator=torch.Generator().manual_seed(i), max_shift=2)
            loss = F.cross_entropy(model(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        comm.barrier(world)
        tic = time.perf_counter()
        error = None
        try:
            step(0)
        except Exception as exc:  # noqa: BLE001 - recorded, the other modes still run
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        errors = [e for e in comm.allgather(world, error, f"first step of {phase} {mode}") if e]
        comm.barrier(world)
        first = time.perf_counter() - tic
        return (None if errors else step), first, (errors[0] if errors else None)

    steps, firsts, errors = {}, {}, {}
    for phase in args.phases:
        for mode in ["eager", *args.modes]:
            key = f"{phase} {mode}"
            step, firsts[key], err = build(phase, mode)
            if err:
                errors[key] = err
            else:
                steps[key] = step
            if world.is_root:
                print(f"{key}: first step {firsts[key]:.1f} s{' FAILED ' + err if err else ''}", flush=True)

    rounds, loads = [], [load()]
    for r in range(args.rounds):
        row = {}
        for phase in args.phases:
            modes = ["eager", *args.modes]
            for mode in modes if r % 2 == 0 else modes[::-1]:
                key = f"{phase} {mode}"
                if key in steps:
                    row[key] = time_steps(steps[key], getattr(args, f"{phase}_steps"), world) / getattr(args, BATCH[phase])
                    if world.is_root:
                        print(f"round {r + 1}: {key}: {1e3 * row[key]:.2f} ms/image", flush=True)
        rounds.append(row)
        loads.append(load())
    if world.is_root:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "loads": loads, "firsts": firsts, "errors": errors,
                                               "threads": threads, "ranks": world.size, "args": vars(args),
                                               "data": source}, indent=1))
    comm.shutdown_distributed()


def spread(values: list[float], digits: int = 2) -> str:
    """'median (min-max)' of `values`."""
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def ratios(rounds: list[dict], phase: str, mode: str) -> list[float]:
    """eager / compiled seconds per image within each round that timed both (> 1: compiled faster)."""
    return [r[f"{phase} eager"] / r[f"{phase} {mode}"] for r in rounds
            if f"{phase} eager" in r and f"{phase} {mode}" in r]


def table(res: dict) -> list[str]:
    args, rounds = res["args"], res["rounds"]
    rows = ["| step | mode | first step, s (compiles) | ms/image, median (range) | **eager / compiled** "
            "(median, range; > 1: compiled faster) |", "|---|---|---|---|---|"]
    for phase in args["phases"]:
        label = (f"sub (w{args['width']}, batch {args['sub_batch']}, 16x16 tile)" if phase == "sub"
                 else f"global DDP (w{args['width']}, batch {args['global_batch']} a rank)")
        for mode in ["eager", *args["modes"]]:
            key = f"{phase} {mode}"
            first = f"{res['firsts'][key]:.1f}"
            if key in res["errors"]:
                rows.append(f"| {label} | {mode} | {first} | failed: {res['errors'][key]} | - |")
                continue
            times = [1e3 * r[key] for r in rounds if key in r]
            ratio = "-" if mode == "eager" else f"**{spread(ratios(rounds, phase, mode))}**"
            rows.append(f"| {label} | {mode} | {first} | {spread(times)} | {ratio} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--phases", nargs="+", choices=["sub", "global"], default=["sub", "global"])
    p.add_argument("--modes", nargs="+", default=["default"],
                   help="torch.compile modes besides eager: default, max-autotune-no-cudagraphs, ...")
    p.add_argument("--sub-batch", type=int, default=64)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sub-steps", type=int, default=4)
    p.add_argument("--global-steps", type=int, default=2)
    p.add_argument("--cache-dir", default=None, help="TORCHINDUCTOR_CACHE_DIR (default: a fresh temporary folder)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--write", action="store_true", help="record the table in benchmarks/RESULTS.md")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    passed = [a for a in sys.argv[1:] if a != "--write"]
    with tempfile.TemporaryDirectory() as tmp:  # a fresh inductor cache unless one is given
        cache = [] if args.cache_dir else ["--cache-dir", str(Path(tmp) / "inductor")]
        res = run_worker(__file__, "compile", args.ranks, [*cache, *passed], timeout=args.timeout)
    rows = table(res)
    print("\n".join(rows))
    if args.write:
        command = "python benchmarks/bench_compile.py " + " ".join(passed)
        record(HEADING, [f"Command: `{command.strip()}`; machine: {machine()}; {res['ranks']} MPI ranks, "
                         f"{res['threads']} thread(s) each; inductor cache: "
                         f"{'`' + args.cache_dir + '`' if args.cache_dir else 'fresh'}; loads before / after each "
                         f"round: {res['loads']}; data: {res['data']}.", "", *rows])


if __name__ == "__main__":
    main()
