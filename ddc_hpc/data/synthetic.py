"""A deterministic synthetic image set whose class evidence is spread over the whole image.

Each image is cut into four quadrants; each quadrant shows one texture ("symbol": oriented
stripes — 4 orientations, more frequency bands when more symbols are needed) in random colours, at
a random period and phase, plus Gaussian noise.  Class c has its own symbol c: every quadrant shows
it with probability ``evidence`` and otherwise a random distractor symbol.  So, as with photos:

* one tile sees about one quadrant, which is only partly informative (best possible accuracy from
  one clean quadrant: ``tile_bayes_accuracy``, about ``evidence``);
* the full image is much more informative (the most frequent symbol; about 0.9 for the default
  evidence 0.65), and a CNN ending in global average pooling can read it (it counts textures);
* summing the votes of four tile-trained networks over the whole image — what a composed network
  does before any training — already beats every one of them.

Colours, periods, phases and the positions of symbols carry no class information.
"""

from __future__ import annotations

import numpy as np

_ORIENTATIONS = 4
_CHUNK = 1024  # samples rendered at a time (fixed, so results do not depend on memory)


def symbol_count(num_classes: int) -> int:
    """Textures needed: one per class plus at least one spare distractor, whole frequency bands."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _ORIENTATIONS * -(-(num_classes + 1) // _ORIENTATIONS)


def synthetic(n: int, seed: int, num_classes: int = 10, size: int = 32,
              noise: float = 40.0, evidence: float = 0.65) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 (n, size, size, 3) and labels int64 (n,), deterministic in the arguments.

    Classes are balanced (n // num_classes each, the remainder to the first classes), in a
    seeded random order.
    """
    if n < 0 or size < 4 or not 0.0 <= evidence <= 1.0:
        raise ValueError(f"need n >= 0, size >= 4 and 0 <= evidence <= 1, got {n}, {size}, {evidence}")
    q = symbol_count(num_classes)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    distractor = (labels[:, None] + rng.integers(1, q, (n, 4))) % q  # any symbol but the class's
    symbols = np.where(rng.random((n, 4)) < evidence, labels[:, None], distractor)
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


def tile_bayes_accuracy(num_classes: int = 10, evidence: float = 0.65) -> float:
    """Best possible accuracy from one clean quadrant alone: guess the class of the symbol seen."""
    q = symbol_count(num_classes)
    distract = (1 - evidence) / (q - 1)  # chance of any one particular distractor symbol
    # A class symbol s: class s if evidence beats a distractor's odds; a spare symbol: any class.
    own = max(evidence, distract) if num_classes > 1 else 1.0
    return own + distract * (q - num_classes) / num_classes
