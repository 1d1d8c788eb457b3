"""Does the data loader keep up with training? Images/s it delivers vs images/s training consumes.

Side by side, on one thread each (torch.set_num_threads(1)), batch 128, augmentation on:

* loader: ``batches`` over a random permutation of an HDF5 file (read + tile crop + flip + shift
  + normalise -> float32 NCHW), with the set held in memory and read lazily from the file;
* consumer: one Adam training step per batch of cifar_resnet20 — the K=4 sub-network of the
  width-64 global net (``partitions=4, width=64``: stage-1 width 16) on 16x16 and 20x20 tiles,
  and for full 32x32 images ``partitions=1, width=16`` (the width-64 global net is too slow to
  time on this CPU: one single-thread step costs ~50x the sub-network's, docs/PLATFORM.md);
* end to end: the same training with the loader inline vs prefetching in a background thread.

    python benchmarks/bench_loader.py [--data FILE.h5|FILE.npz] [--write]

Without --data it imports ../shared/data/cifar10-train.npz when present, else a synthetic set,
into a temporary HDF5 file. --write records the table in benchmarks/RESULTS.md ("Loader (issue 4)").
"""

from __future__ import annotations

import argparse
import datetime
import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ddc_hpc.data import H5Writer, batches, import_dataset, load_dataset, synthetic  # noqa: E402
from ddc_hpc.partition import tile_slices  # noqa: E402
from common import cpu_model  # noqa: E402

SHARED_NPZ = REPO.parent / "shared" / "data" / "cifar10-train.npz"
HEADING = "## Loader (issue 4)"
BATCH = 128


def prepare(data: str | None, folder: Path) -> tuple[Path, str]:
    if data and data.endswith((".h5", ".hdf5")):
        return Path(data), data
    npz = Path(data) if data else SHARED_NPZ
    out = folder / "bench.h5"
    if npz.exists():
        import_dataset("npz", str(npz), out, progress=False)
        return out, f"{npz.name} (imported to HDF5)"
    x, y = synthetic(10_000, 0)
    with H5Writer(out, image_shape=x.shape[1:], classes=[str(i) for i in range(10)], source="synthetic") as w:
        w.append("train", x, y)
    return out, "synthetic n=10000 (written to HDF5)"


def _best_rate(times: list[float], sizes: list[int]) -> float:
    """Images/s from the fastest batch: other processes sharing the CPU only ever slow a batch down."""
    return float(np.median(sizes) / np.min(times))


def loader_rate(images, mean, tile, batches_to_time: int) -> float:
    order = np.random.default_rng(0).permutation(len(images))[: BATCH * (batches_to_time + 1)]
    g = torch.Generator().manual_seed(0)
    it = batches(images, order, BATCH, mean=mean, tile=tile, augment=True, generator=g, drop_last=True)
    next(it)  # warm-up (opens the file, first allocations)
    times, sizes = [], []
    t = time.perf_counter()
    for _, y in it:
        now = time.perf_counter()
        times.append(now - t)
        sizes.append(len(y))
        t = now
    return _best_rate(times, sizes)


def make_net(tile):
    import ddc_hpc

    if tile is None:
        return ddc_hpc.build_model("cifar_resnet20", 10, partitions=1, width=16)
    return ddc_hpc.build_model("cifar_resnet20", 10, partitions=4, width=64)


def prefetched(stream: Iterator) -> Iterator:
    """The items of `stream`, each made one ahead in a daemon thread while the caller trains on the
    previous one (the "prefetch thread" column; `stream` is then advanced by that thread only, in
    order, so the items are the same as inline); errors re-raised here."""
    slots: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker():
        try:
            for item in stream:
                if not put(("ok", item)):
                    return
            put(("ok", done))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    thread = threading.Thread(target=worker, name="bench-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = slots.get()
            if kind == "error":
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def train_rate(images, mean, tile, steps: int, prefetch: bool | None) -> float:
    """Images/s of training (fastest step, loading included unless prefetch is None: then the
    consumer alone, on pre-made batches)."""
    torch.manual_seed(0)
    net = make_net(tile).train()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    order = np.random.default_rng(1).permutation(len(images))[: BATCH * (steps + 2)]
    if prefetch is None:
        premade = list(batches(images, order[: 2 * BATCH], BATCH, mean=mean, tile=tile, augment=True, generator=g))
        stream = (premade[i % 2] for i in range(steps + 2))
    else:
        stream = batches(images, order, BATCH, mean=mean, tile=tile, augment=True, generator=g)
        stream = prefetched(stream) if prefetch else stream
    times, sizes = [], []
    t = time.perf_counter()
    for i, (x, y) in enumerate(stream):
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        now = time.perf_counter()
        if i >= 2:  # two warm-up steps
            times.append(now - t)
            sizes.append(len(y))
        t = now
    return _best_rate(times, sizes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="an HDF5 or npz file (default: see above)")
    p.add_argument("--loader-batches", type=int, default=60)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    p.add_argument("--write", action="store_true", help="record the results in benchmarks/RESULTS.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path, described = prepare(args.data, Path(tmp))
        lazy = load_dataset(f"h5:{path}", num_classes=None, val_fraction=0.1, seed=0, in_memory=False)
        held = load_dataset(f"h5:{path}", num_classes=None, val_fraction=0.1, seed=0, in_memory=True)
        views = [("tile 16x16", tile_slices(32, 32, (2, 2), 0)[0], "sub: cifar_resnet20 partitions=4 width=64"),
                 ("tile 20x20", tile_slices(32, 32, (2, 2), 4)[0], "sub: cifar_resnet20 partitions=4 width=64"),
                 ("full 32x32", None, "global: cifar_resnet20 partitions=1 width=16")]
        rows = []
        for name, tile, model in views:
            mem = loader_rate(held.train, held.mean, tile, args.loader_batches)
            disk = loader_rate(lazy.train, lazy.mean, tile, args.loader_batches)
            consume = train_rate(held.train, held.mean, tile, args.steps, None)
            inline = train_rate(lazy.train, lazy.mean, tile, args.steps, False)
            ahead = train_rate(lazy.train, lazy.mean, tile, args.steps, True)
            rows.append((name, model, mem, disk, consume, inline, ahead))
            print(f"{name}: loader {mem:,.0f} img/s in memory, {disk:,.0f} from file; training consumes "
                  f"{consume:,.0f} img/s -> {min(mem, disk) / consume:.1f}x; end to end inline {inline:,.0f}, "
                  f"prefetch {ahead:,.0f} img/s", flush=True)
    table = [
        "| view | consumer (one Adam step per batch) | loader, in memory | loader, lazy HDF5 | training consumes "
        "| loader / consumer (lazy) | end to end, inline | end to end, prefetch thread |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, model, mem, disk, consume, inline, ahead in rows:
        table.append(f"| {name} | {model} | {mem:,.0f} | {disk:,.0f} | {consume:,.0f} | {disk / consume:.1f}x "
                     f"| {inline:,.0f} | {ahead:,.0f} |")
    print("\n".join(table))
    if args.write:
        record(described, table)


def record(described: str, table: list[str]) -> None:
    results = REPO / "benchmarks" / "RESULTS.md"
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    section = "\n".join([
        HEADING,
        "",
        f"Command: `python benchmarks/bench_loader.py --write` ({datetime.date.today().isoformat()}); "
        f"machine: {cpu_model()}, torch {torch.__version__}, one thread (`torch.set_num_threads(1)`) for "
        f"loader and training alike; data: {described}; batch {BATCH}, augmentation on (flip, shift up to "
        "4 px), random order. Images/s from the fastest of the timed batches (the machine is shared with other jobs); the loader "
        "must deliver at least 3x what training consumes.",
        "The full-image row uses the width-16 global net (partitions=1), not the paper's width 64, which is "
        "too slow to time here.",
        "",
        *table,
        "",
    ])
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.M | re.S)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    results.write_text(text)
    print(f"recorded in {results}")


if __name__ == "__main__":
    main()
