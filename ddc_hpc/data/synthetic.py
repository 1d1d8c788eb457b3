"""A deterministic synthetic image set whose class evidence is spread over the whole image.

Each image is cut into four quadrants; each quadrant shows one of ``q`` textures ("symbols":
oriented stripes — 4 orientations, more frequency bands when more symbols are needed) in random
colours, at a random period and phase, plus Gaussian noise.  A class is a *multiset* of four symbols
(e.g. {0°, 0°, 45°, 135°}), laid out over the quadrants in a random order per image.  So:

* the full image determines the class (any two classes differ in at least two quadrants), and a
  CNN ending in global average pooling can read it (it only has to count textures);
* one tile sees about one quadrant: one symbol, shared by several classes, so a tile alone is
  only partly informative (for 10 classes the best possible accuracy from one clean quadrant is
  about 20 %; an overlapping 20x20 tile also sees strips of its neighbours).

Colours, periods, phases and the quadrant order carry no class information.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

_ORIENTATIONS = 4
_CHUNK = 1024  # samples rendered at a time (fixed, so results do not depend on memory)


@lru_cache(maxsize=None)
def class_codes(num_classes: int) -> tuple[tuple[int, ...], ...]:
    """The symbol multiset (sorted 4-tuple) of each class; fixed for a given class count.

    Any two classes differ in at least two symbols, no symbol appears more than twice in a class,
    and among many seeded greedy draws the code book that leaves one quadrant least informative
    (lowest `tile_bayes_accuracy`) is kept.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    rng = np.random.default_rng(20221)  # the code book does not depend on the data seed
    bands = 1
    while True:
        q = _ORIENTATIONS * bands
        candidates = np.array([c for c in itertools.combinations_with_replacement(range(q), 4)
                               if max(c.count(s) for s in set(c)) <= 2])
        counts = np.stack([np.bincount(c, minlength=q) for c in candidates])  # (M, q)
        best, best_score = None, None
        for _ in range(64):
            chosen: list[int] = []
            for i in rng.permutation(len(candidates)):
                # distance = symbols to replace = 4 - |multiset intersection|
                if not chosen or (4 - np.minimum(counts[chosen], counts[i]).sum(1)).min() >= 2:
                    chosen.append(int(i))
                    if len(chosen) == num_classes:
                        break
            if len(chosen) == num_classes:
                score = counts[chosen].max(0).sum()  # numerator of the one-quadrant Bayes accuracy
                if best_score is None or score < best_score:
                    best, best_score = chosen, score
        if best is not None:
            return tuple(tuple(int(s) for s in candidates[i]) for i in sorted(best))
        bands += 1


def synthetic(n: int, seed: int, num_classes: int = 10, size: int = 32,
              noise: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 (n, size, size, 3) and labels int64 (n,), deterministic in (n, seed).

    Classes are balanced (n // num_classes each, the remainder to the first classes), in a
    seeded random order.
    """
    if n < 0 or size < 4:
        raise ValueError(f"need n >= 0 and size >= 4, got n={n}, size={size}")
    codes = np.array(class_codes(num_classes), dtype=np.int64)  # (K, 4)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    order = np.argsort(rng.random((n, 4)), axis=1)  # quadrant layout of each image
    symbols = np.take_along_axis(codes[labels], order, axis=1)  # (n, 4)
    orientation = symbols % _ORIENTATIONS
    band = symbols // _ORIENTATIONS
    theta = orientation * (np.pi / _ORIENTATIONS) + rng.uniform(-0.12, 0.12, (n, 4))
    period = rng.uniform(3.0, 5.0, (n, 4)) * (1.6 ** band)
    phase = rng.uniform(0, 2 * np.pi, (n, 4))
    base = rng.uniform(50, 205, (n, 4, 3))
    amplitude = rng.uniform(35, 70, (n, 4, 3)) * rng.choice([-1.0, 1.0], (n, 4, 3))

    half = size // 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    quadrant = (yy >= half).astype(np.int64) * 2 + (xx >= half)  # (size, size) in 0..3
    images = np.empty((n, size, size, 3), np.uint8)
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        sl = slice(lo, hi)
        th, pe, ph = (a[sl][:, quadrant] for a in (theta, period, phase))  # (m, size, size)
        wave = np.sin(2 * np.pi * (xx * np.cos(th) + yy * np.sin(th)) / pe + ph)
        pixels = base[sl][:, quadrant] + amplitude[sl][:, quadrant] * wave[..., None]
        pixels += rng.normal(0.0, noise, pixels.shape)
        images[sl] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return images, labels


def tile_bayes_accuracy(num_classes: int = 10) -> float:
    """Best possible accuracy from one clean quadrant alone (its symbol), for reference."""
    codes = class_codes(num_classes)
    symbols = {s for c in codes for s in c}
    return sum(max(c.count(s) for c in codes) for s in symbols) / (4 * num_classes)
