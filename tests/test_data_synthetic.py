"""The synthetic set is learnable from the full image and only partly from one tile.

``pytest`` runs a small check with a tiny CNN (a few seconds on one thread). Run this file as a
script for the numbers in docs/DATA.md:

    python tests/test_data_synthetic.py [--epochs 5] [--model cifar_resnet20 --width 8] [--no-augment]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from ddc_hpc.data import batches, load_dataset
from ddc_hpc.partition import tile_slices


def tiny_cnn(width: int = 8, num_classes: int = 10) -> nn.Module:
    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    w = width
    return nn.Sequential(block(3, w, 1), block(w, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1),
                         block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * w, num_classes))


def train_and_score(net: nn.Module, splits, tile, epochs: int, seed: int = 0, lr: float = 3e-3,
                    batch_size: int = 64, augment: bool = True) -> list[float]:
    """Adam, flip+shift augmentation (unless ``augment`` is false); validation accuracy after each epoch."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr)
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(splits.train), generator=g).numpy()
        for x, y in batches(splits.train, order, batch_size, mean=splits.mean, tile=tile, augment=augment,
                            generator=g, max_shift=2):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        correct = 0
        with torch.no_grad():
            for x, y in batches(splits.val, np.arange(len(splits.val)), 256, mean=splits.mean, tile=tile):
                correct += int((net(x).argmax(1) == y).sum())
        scores.append(correct / len(splits.val))
    return scores


def test_synthetic_full_image_learnable_one_tile_only_partly():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and fair to the other jobs on the machine
    try:
        _check_learnable()
    finally:
        torch.set_num_threads(threads)


def _check_learnable():
    splits = load_dataset("synthetic", num_classes=10, val_fraction=0.2, seed=0)  # 1600 train, 400 val
    tile = tile_slices(32, 32, (2, 2), 0)[0]
    torch.manual_seed(0)
    full = train_and_score(tiny_cnn(8), splits, None, epochs=5)[-1]
    torch.manual_seed(0)
    part = train_and_score(tiny_cnn(8), splits, tile, epochs=5)[-1]
    assert full >= 0.6, (full, part)  # chance is 0.1
    assert full - part >= 0.1, (full, part)  # one quadrant alone: at most ~0.65 (tile_bayes_accuracy)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--model", default="tiny", help="'tiny' or a ddc_hpc model name, e.g. cifar_resnet20")
    p.add_argument("--width", type=int, default=8, help="stage-1 width of every network trained")
    p.add_argument("--source", default="synthetic")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no flip and shift (a flip turns 45-degree stripes into 135-degree ones: see docs/DATA.md)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_dataset(args.source, num_classes=10, val_fraction=args.val_fraction, seed=0)
    print(f"{args.source}: {len(splits.train)} train, {len(splits.val)} val; {args.model} stage-1 width "
          f"{args.width}; {args.epochs} epochs, Adam 3e-3, batch 64, "
          f"{'flip + shift 2 px' if args.augment else 'no augmentation'}, {args.threads} thread(s)")
    for name, tile in (("full 32x32", None), ("tile 16x16 (2x2, no overlap)", tile_slices(32, 32, (2, 2), 0)[0]),
                       ("tile 20x20 (2x2, overlap 4)", tile_slices(32, 32, (2, 2), 4)[0])):
        torch.manual_seed(0)
        if args.model == "tiny":
            net = tiny_cnn(args.width)
        else:
            import ddc_hpc

            # a sub-network of K=4 at stage-1 width w is the global net of width 4w split by 4
            net = ddc_hpc.build_model(args.model, 10, partitions=1 if tile is None else 4,
                                      width=args.width if tile is None else 4 * args.width)
        t = time.perf_counter()
        scores = train_and_score(net, splits, tile, args.epochs, augment=args.augment)
        print(f"  {name:30s} val accuracy per epoch {' '.join(f'{s:.3f}' for s in scores)}  "
              f"({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
