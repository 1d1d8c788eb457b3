"""Issue 7b: the global phase's throughput against a plain torch DDP script, and the MPI engine.

Three launches per round, interleaved, rounds repeated (the machine is shared):

* **global phase, DDP-gloo**: `mpiexec -n 4`, the project's fit loop (`ddc_hpc.train.fit`: its
  batches via `make_batch`, its per-step NaN check, stop-signal allreduce and bookkeeping) on the
  model wrapped by torch DDP over gloo bootstrapped from MPI by `ddc_hpc.comm` — what
  `phases.global_phase` does;
* **vanilla**: `torchrun --nproc-per-node 4 benchmarks/vanilla_ddp.py` — plain torch DDP (gloo);
* **global phase, mpi4py engine**: as the first, with `ddc_hpc.engine.MPIDataParallel` in place of
  DDP (gradients over MPI Iallreduce; gloo kept for the loop's few scalars).

Same model (cifar_resnet32, width 64 by default), same data (CIFAR-10 npz), batch 128 per rank,
Adam, one thread per rank, 2 epochs of S steps per rank: the first warms up, the second is timed
(images/s over all ranks / rank 0's train seconds of that epoch; evaluation excluded).

    python benchmarks/bench_global.py [--rounds 3] [--steps 3] [--width 64] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_NPZ, SHARED_SOURCE, load, load_json, machine, median, mpi, record, run, tool  # noqa: E402

sys.path.insert(0, str(REPO))

HEADING = "## Global phase vs vanilla DDP, and the MPI engine (issue 7b)"
BATCH = 128
IMPLS = ("ddp", "vanilla", "engine")


def worker(args) -> None:
    import torch

    from ddc_hpc import build_model, comm
    from ddc_hpc.config import PhaseConfig
    from ddc_hpc.data import load_dataset
    from ddc_hpc.train import Job, PhaseData, fit

    world = comm.init_world()
    comm.configure_threads(world, 0, False)
    comm.init_distributed(world, "gloo")
    source = SHARED_SOURCE if SHARED_NPZ.exists() else "synthetic"
    data = load_dataset(source, num_classes=10, val_fraction=0.1, seed=0,
                        limit=BATCH * args.steps * world.size, val_limit=world.size * 2)
    from torch.nn.parallel import DistributedDataParallel

    from ddc_hpc.engine import MPIDataParallel

    def make_job(wrap: str, epochs: int) -> Job:
        torch.manual_seed(0)
        model = build_model(args.model, 10, width=args.width)
        wrapped = MPIDataParallel(model, world) if wrap == "engine" else DistributedDataParallel(model)
        return Job(name="global", model=wrapped, config=PhaseConfig(epochs=epochs, batch_size=BATCH, lr=1e-3),
                   data=PhaseData(train=data.train, val=data.val, mean=data.mean, tile=None, augment=True,
                                  max_shift=2),
                   slot=None, seed=1, rank=world.rank, group=None, log=lambda _m: None)

    if args.wrap == "pair":
        # DDP-gloo and the engine side by side in one launch: one epoch each, alternating; the
        # first pair warms up. Ratios per pair, seconds apart, under the same load.
        jobs = {"ddp": make_job("ddp", 1), "engine": make_job("engine", 1)}
        pairs = []
        for i in range(args.pairs + 1):
            speeds = {}
            for name, job in jobs.items():
                speeds[name] = fit(job, world.device)[-1]["images_per_second"]
            if i:
                pairs.append(speeds)
        if world.is_root:
            Path(args.json).write_text(json.dumps({"pairs": pairs}))
        comm.shutdown_distributed()
        return
    job = make_job(args.wrap, 2)
    wrapped = job.model
    history = fit(job, world.device)
    if world.is_root:
        row = history[1]
        out = {"images_per_second": row["images_per_second"], "seconds": row["train_seconds"],
               "samples": row["train_samples"], "threads": torch.get_num_threads()}
        if args.wrap == "engine":
            s = wrapped.stats
            out["engine"] = {"steps": s.steps, "buckets": s.buckets, "wait_seconds": s.wait_seconds,
                             "buckets_started_in_backward": s.buckets_started_in_backward,
                             "buckets_started_at_end": s.buckets_started_at_end}
        Path(args.json).write_text(json.dumps(out))
    comm.shutdown_distributed()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--wrap", choices=("ddp", "engine", "pair"), help=argparse.SUPPRESS)
    p.add_argument("--pairs", type=int, default=4, help="timed DDP/engine epoch pairs in the one-launch comparison")
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="steps per rank per epoch (2 epochs, the 2nd timed)")
    p.add_argument("--model", default="cifar_resnet32")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    before = load()
    common_args = ["--model", args.model, "--width", str(args.width), "--steps", str(args.steps)]
    rounds, loads, failures = [], [before], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            row = {}
            for impl in IMPLS:
                out = Path(tmp) / f"{impl}-{r}.json"
                for attempt in (1, 2):  # one retry; a failure is kept and reported, never hidden
                    try:
                        if impl == "vanilla":
                            run([tool("torchrun"), "--standalone", "--nproc-per-node", str(args.ranks),
                                 str(REPO / "benchmarks" / "vanilla_ddp.py"), "--json", str(out), *common_args])
                        else:
                            mpi(args.ranks, __file__, "--worker", "--wrap", impl, "--json", str(out), *common_args)
                        break
                    except RuntimeError as err:
                        failures.append({"round": r + 1, "launch": impl, "attempt": attempt, "error": str(err)[-2500:]})
                        print(f"round {r + 1} {impl}: attempt {attempt} FAILED:\n{str(err)[-2500:]}", flush=True)
                        if attempt == 2:
                            raise
                row[impl] = load_json(out)
                print(f"round {r + 1} {impl}: {row[impl]['images_per_second']:.1f} img/s", flush=True)
            rounds.append(row)
            loads.append(load())
        out = Path(tmp) / "pair.json"
        mpi(args.ranks, __file__, "--worker", "--wrap", "pair", "--pairs", str(args.pairs), "--json", str(out),
            *common_args)
        pairs = load_json(out)["pairs"]
        loads.append(load())
    res = {"rounds": rounds, "loads": loads, "args": vars(args), "failures": failures, "pairs": pairs}
    (REPO / "benchmarks" / "last_global.json").write_text(json.dumps(res, indent=1))
    lines = table(rounds)
    ratios = [p["engine"] / p["ddp"] for p in pairs]
    pair_lines = [
        "| in one launch, alternating epochs | DDP-gloo images/s | mpi4py engine images/s | engine / DDP |",
        "|---|---|---|---|",
        *[f"| pair {i + 1} | {p['ddp']:.1f} | {p['engine']:.1f} | {p['engine'] / p['ddp']:.3f} |" for i, p in enumerate(pairs)],
        f"| **median** | {median([p['ddp'] for p in pairs]):.1f} | {median([p['engine'] for p in pairs]):.1f} "
        f"| **{median(ratios):.3f}** |",
    ]
    lines += ["", *pair_lines]
    print("\n".join(lines))
    if args.write:
        engine = rounds[-1]["engine"]["engine"]
        record(HEADING, [
            f"Command: `python benchmarks/bench_global.py --rounds {args.rounds} --steps {args.steps} --width "
            f"{args.width} --write`; machine: {machine()}; {args.ranks} ranks on 2 cores, one thread each; "
            f"loads per round: {'; '.join(loads)} (shared machine; raw numbers in benchmarks/last_global.json).",
            "",
            f"{args.model} width {args.width} on CIFAR-10 32x32, batch {BATCH} per rank, Adam; each launch trains 2 "
            f"epochs of {args.steps} steps per rank and times the second (evaluation excluded). Rounds interleave "
            "the three launches; ratios are taken within a round, then the median over rounds; best = the "
            "fastest round of each launch (the one least slowed by other jobs). The second table runs DDP-gloo and "
            f"the engine in one `mpiexec` launch, alternating one-epoch `fit` calls ({args.steps} steps each, "
            "a first pair as warm-up): the cleanest engine/DDP comparison on a shared machine.",
            "",
            *lines,
            "",
            f"Engine, last round: {len(engine['buckets'])} buckets "
            f"({', '.join(f'{b / 2**20:.1f}' for b in engine['buckets'])} MiB), "
            f"{engine['buckets_started_in_backward']} of {engine['buckets_started_in_backward'] + engine['buckets_started_at_end']} "
            f"bucket allreduces started from hooks during backward, {engine['wait_seconds']:.2f} s spent in the "
            f"end-of-backward wait over {engine['steps']} steps on rank 0.",
            *([""] + [f"Failed launch (retried): round {f['round']} {f['launch']}, attempt {f['attempt']}: "
                      f"`{f['error'].strip().splitlines()[-1][:200]}`" for f in failures] if failures else []),
        ])


def table(rounds: list[dict]) -> list[str]:
    lines = ["| launch | images/s (median; per round) | / vanilla (median of per-round ratios) | best / best vanilla |",
             "|---|---|---|---|"]
    names = {"ddp": "global phase, DDP-gloo (project fit loop)", "vanilla": "vanilla torch DDP (torchrun)",
             "engine": "global phase, mpi4py engine (project fit loop)"}
    for impl in IMPLS:
        speeds = [r[impl]["images_per_second"] for r in rounds]
        ratio = median([r[impl]["images_per_second"] / r["vanilla"]["images_per_second"] for r in rounds])
        best = max(speeds) / max(r["vanilla"]["images_per_second"] for r in rounds)
        lines.append(f"| {names[impl]} | {median(speeds):.1f} ({', '.join(f'{s:.1f}' for s in speeds)}) "
                     f"| {'' if impl == 'vanilla' else f'**{ratio:.3f}**'} | {'' if impl == 'vanilla' else f'{best:.3f}'} |")
    engine_vs_ddp = median([r["engine"]["images_per_second"] / r["ddp"]["images_per_second"] for r in rounds])
    best = max(r["engine"]["images_per_second"] for r in rounds) / max(r["ddp"]["images_per_second"] for r in rounds)
    lines.append(f"| mpi4py engine / DDP-gloo | | {engine_vs_ddp:.3f} | {best:.3f} |")
    return lines


if __name__ == "__main__":
    main()
