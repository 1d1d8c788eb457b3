"""A plain torch DDP training script, the reference for issue 7b (launched with torchrun).

    torchrun --nproc-per-node 4 benchmarks/vanilla_ddp.py --json OUT [--width 64 --steps 3]

What anyone would write: gloo via torchrun's env:// rendezvous, the model from the registry (the
same network), CIFAR-10 from the npz in memory, DistributedSampler, per batch random flip and
random shift (pad + crop) on the float tensor, normalise, forward, cross-entropy, backward, Adam.
One thread per process (torchrun's own default, OMP_NUM_THREADS=1, equals the project's policy
here: 2 cores / 4 ranks). Epoch 1 warms up; epoch 2 is timed; images/s = samples over all ranks /
rank 0's epoch seconds (the project's fit loop reports the same quantity).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ddc_hpc import build_model  # noqa: E402  (the model only: everything else is plain torch)

NPZ = REPO.parent / "shared" / "data" / "cifar10-train.npz"


def augment(x: torch.Tensor, g: torch.Generator, shift: int = 2) -> torch.Tensor:
    n = x.shape[0]
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=g).tolist()
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=g).tolist()
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(zip(dy, dx))])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--json", required=True)
    p.add_argument("--model", default="cifar_resnet32")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="steps per rank per epoch")
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    n = args.batch * args.steps * size
    if NPZ.exists():
        with np.load(NPZ) as d:
            images, labels = d["x"][:n], d["y"][:n]
    else:
        rng = np.random.default_rng(0)
        images, labels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)
    mean = torch.from_numpy(images.reshape(-1, 3).mean(0) / 255.0).float().view(1, 3, 1, 1)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(labels.astype(np.int64))

    torch.manual_seed(0)
    model = DistributedDataParallel(build_model(args.model, 10, width=args.width))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    sampler = DistributedSampler(range(n), shuffle=True, seed=0)
    seconds = 0.0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        tic = time.perf_counter()
        for step in range(0, len(order), args.batch):
            idx = torch.tensor(order[step : step + args.batch])
            g = torch.Generator().manual_seed(epoch * 100_000 + step)
            x = augment(images[idx].float().div_(255.0), g).sub_(mean)
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - tic
    if rank == 0:
        Path(args.json).write_text(json.dumps({
            "images_per_second": n / seconds, "seconds": seconds, "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
