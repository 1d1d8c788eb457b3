"""Issue 7c: the compose phase's data movement against this machine's memcpy bandwidth.

At 4 ranks, K=4, for resnet50 (Food-101's 101 classes) and cifar_resnet110 (width 64, 10 classes),
with the project's own code: each rank flattens its trained sub-network (`flatten_state`), one
`comm.gatherv` brings the four to rank 0, which unflattens them (`unflatten_state`) and composes the
global network (`compose`) — what `phases.compose_phase` does between its metric allgather and its
Theorem 2.1 check. Side by side on rank 0 in the same run, a numpy copy of the same bytes
(`np.copyto` into a preallocated array, pages touched beforehand) gives memcpy's speed.

    python benchmarks/bench_compose.py [--repeats 7] [--write]

Bandwidths: Gatherv = bytes arriving at rank 0 / seconds; compose = bytes of the global network's
state written / seconds (unflatten + compose); combined = memcpy time of both byte counts / the
time of both steps. Each the median of the repeats (min in brackets), ratios per repeat.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load, load_json, machine, median, mpi, record  # noqa: E402

sys.path.insert(0, str(REPO))

HEADING = "## Composition bandwidth (issue 7c)"
MODELS = [("resnet50", 101, {}), ("cifar_resnet110", 10, {"width": 64})]


def worker(args) -> None:
    import numpy as np
    import torch

    from ddc_hpc import build_model, comm
    from ddc_hpc.compose import compose, flatten_state, state_numel, unflatten_state

    world = comm.init_world()
    comm.configure_threads(world, 0, False)
    current_wait = comm.collectives._wait  # since 34b597e: comm.wait_all (back-to-back polls 5 ms, then pauses <= 1 ms)

    def old_wait(world, request, what):
        """comm._wait before 34b597e, verbatim but for the error path and the collective counter (since
        dropped): pauses doubling to 50 ms."""
        deadline = time.monotonic() + world.timeout
        pause = 1e-4
        while not request.Test():
            if time.monotonic() > deadline:
                raise comm.CollectiveTimeout(what)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    K = 4
    out = {}
    for name, classes, options in MODELS:
        torch.manual_seed(world.rank)
        flat = flatten_state(build_model(name, classes, partitions=K, **options)).numpy()
        if world.is_root:
            subnets = [build_model(name, classes, partitions=K, **options) for _ in range(K)]
            tic = time.perf_counter()
            global_net = build_model(name, classes, partitions=1, **options)
            build_seconds = time.perf_counter() - tic
            global_bytes = state_numel(global_net) * 4
        rows = []
        for repeat in range(args.repeats):
            # comm.gatherv with the old _wait and with today's, in alternating order
            timings = {}
            variants = [("gatherv_old", old_wait), ("gatherv", current_wait)]
            for variant, wait in variants if repeat % 2 == 0 else variants[::-1]:
                comm.collectives._wait = wait
                comm.barrier(world)
                tic = time.perf_counter()
                gathered = comm.gatherv(world, flat)
                timings[variant] = time.perf_counter() - tic
            comm.collectives._wait = current_wait
            if world.is_root:
                tic = time.perf_counter()
                offset = 0
                for net in subnets:
                    n = state_numel(net)
                    unflatten_state(net, torch.from_numpy(gathered[offset : offset + n]))
                    offset += n
                unflatten = time.perf_counter() - tic
                tic = time.perf_counter()
                compose([net.eval() for net in subnets], global_net, grid=(2, 2))
                composing = time.perf_counter() - tic
                # memcpy of the same bytes, side by side (destination pages touched first)
                copies = {}
                for label, nbytes in (("gather", gathered.nbytes), ("global", global_bytes)):
                    src = np.ones(nbytes // 4, dtype=np.float32)
                    dst = np.zeros_like(src)
                    best = float("inf")
                    for _ in range(3):
                        tic = time.perf_counter()
                        np.copyto(dst, src)
                        best = min(best, time.perf_counter() - tic)
                    copies[label] = best
                rows.append({**timings, "unflatten": unflatten, "compose": composing,
                             "memcpy_gather": copies["gather"], "memcpy_global": copies["global"]})
        if world.is_root:
            out[name] = {"rows": rows, "gather_bytes": int(gathered.nbytes), "global_bytes": int(global_bytes),
                         "sub_bytes": int(flat.nbytes), "build_global_seconds": build_seconds}
            print(name, json.dumps(out[name]["rows"][-1]), flush=True)
    if world.is_root:
        Path(args.json).write_text(json.dumps(out, indent=1))


def table(res: dict) -> list[str]:
    lines = [
        "| network (K=4, 4 ranks) | `comm._wait` | bytes gathered (4 subs) | Gatherv s | Gatherv GB/s "
        "| memcpy GB/s (same bytes) | Gatherv / memcpy | global state bytes | unflatten + compose s | compose GB/s "
        "| memcpy GB/s | compose / memcpy | **both / memcpy** | building the global net (random init), s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        rows, gb, glb = r["rows"], r["gather_bytes"], r["global_bytes"]
        c = [x["unflatten"] + x["compose"] for x in rows]
        c_ratio = [x["memcpy_global"] / (x["unflatten"] + x["compose"]) for x in rows]
        mg = [gb / x["memcpy_gather"] / 1e9 for x in rows]
        mc = [glb / x["memcpy_global"] / 1e9 for x in rows]
        for key, label in (("gatherv_old", "before 34b597e (pauses up to 50 ms)"),
                           ("gatherv", "now: `comm.wait_all` (pauses <= 1 ms)")):
            g = [x[key] for x in rows]
            g_ratio = [x["memcpy_gather"] / x[key] for x in rows]
            both = [(x["memcpy_gather"] + x["memcpy_global"]) / (x[key] + x["unflatten"] + x["compose"]) for x in rows]
            lines.append(
                f"| {name} | {label} | {gb / 1e6:.1f} MB | {median(g):.4f} ({min(g):.4f}) | {gb / median(g) / 1e9:.2f} "
                f"| {median(mg):.2f} | {median(g_ratio):.3f} | {glb / 1e6:.1f} MB | {median(c):.3f} ({min(c):.3f}) "
                f"| {glb / median(c) / 1e9:.2f} | {median(mc):.2f} | {median(c_ratio):.2f} | **{median(both):.3f}** "
                f"| {r['build_global_seconds']:.2f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    before = load()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compose.json"
        done = mpi(4, __file__, "--worker", "--json", str(out), "--repeats", str(args.repeats))
        print(done.stdout[-3000:])
        res = load_json(out)
    lines = table(res)
    print("\n".join(lines))
    (REPO / "benchmarks" / "last_compose.json").write_text(json.dumps(res, indent=1))
    if args.write:
        record(HEADING, [
            f"Command: `python benchmarks/bench_compose.py --repeats {args.repeats} --write` (`mpiexec -n 4` inside); "
            f"machine: {machine()}; {before} before, {load()} after (shared machine). One thread per rank "
            "(the project's policy), float32 states, BatchNorm buffers included.",
            "",
            "Gatherv: rank 0 receives the four flat sub-network states (`comm.gatherv`: counts by allgather, then "
            "Igatherv, each completed by `comm._wait` with its deadline), once with `_wait` as it was before commit "
            "34b597e (sleeps doubling to 50 ms between polls) and once as it is now (`comm.wait_all`), in alternating "
            "order; compose: `unflatten_state` into four sub-networks and `compose` into a "
            "preallocated global network (block-diagonal, every block written into zeros). memcpy: `np.copyto` "
            "of the same byte counts on rank 0, in the same run, fastest of 3. Medians of the repeats (min in "
            "brackets); *both / memcpy* is memcpy's time for both byte counts over the two steps' time.",
            "",
            *lines,
        ])


if __name__ == "__main__":
    main()
