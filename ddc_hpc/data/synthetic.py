"""Deterministic synthetic sets whose class evidence is spread over the whole sample.

``synthetic`` (2D images), ``synthetic1d`` (signals) and ``synthetic3d`` (volumes) share one idea,
described here for images; every generator can also give regression targets instead of classes
(``target="regression"``, see ``regression_targets``).

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
              noise: float = 40.0, evidence: float = 0.65, target: str = "classification"
              ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 (n, size, size, 3) and labels int64 (n,), deterministic in the arguments.

    Classes are balanced (n // num_classes each, the remainder to the first classes), in a
    seeded random order.  With ``target="regression"`` the second array is float32 targets
    (n, num_classes) instead (``regression_targets``), and the images are those of 10 classes
    (the same pixels as ``target="classification"`` with num_classes=10).
    """
    _check_target(target)
    if target == "regression":
        images, _, amplitude, base = _synthetic2d(n, seed, 10, size, noise, evidence)
        return images, regression_targets(amplitude, base, num_classes, _STRENGTH_2D, _BRIGHTNESS_2D)
    return _synthetic2d(n, seed, num_classes, size, noise, evidence)[:2]


_STRENGTH_2D = (35.0, 70.0)
_BRIGHTNESS_2D = (50.0, 205.0)


def _synthetic2d(n, seed, num_classes, size, noise, evidence):
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
    base = rng.uniform(*_BRIGHTNESS_2D, (n, 4, 3))
    amplitude = rng.uniform(*_STRENGTH_2D, (n, 4, 3)) * rng.choice([-1.0, 1.0], (n, 4, 3))

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
    return images, labels, amplitude, base


def tile_bayes_accuracy(num_classes: int = 10, evidence: float = 0.65, symbols: int | None = None) -> float:
    """Best possible accuracy from one clean quadrant alone: guess the class of the symbol seen.

    ``symbols``: the number of patterns (default ``symbol_count``, the 2D set; ``symbol_count_1d``,
    ``symbol_count_3d`` for the others, where one segment / octant alone is the clean part)."""
    q = symbol_count(num_classes) if symbols is None else symbols
    distract = (1 - evidence) / (q - 1)  # chance of any one particular distractor symbol
    # A class symbol s: class s if evidence beats a distractor's odds; a spare symbol: any class.
    own = max(evidence, distract) if num_classes > 1 else 1.0
    return own + distract * (q - num_classes) / num_classes


# ------------------------------------------------------------------------------------------------
# Regression targets (``target="regression"``), shared by every kind
# ------------------------------------------------------------------------------------------------

TARGET_NAMES = ("strength", "brightness")


def _mean_of_uniforms(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Mean over every axis but the first of U(lo, hi) draws, standardised with the exact mean and
    standard deviation of that mean (so the target has mean 0 and std 1 over the distribution,
    whatever n)."""
    count = int(np.prod(values.shape[1:]))
    mean = values.reshape(len(values), -1).mean(1)
    return (mean - (lo + hi) / 2) / ((hi - lo) / np.sqrt(12.0 * count))


def regression_targets(strength: np.ndarray, brightness: np.ndarray, num_targets: int,
                       strength_range: tuple[float, float], brightness_range: tuple[float, float]) -> np.ndarray:
    """float32 (n, num_targets): target 0 is the standardised mean pattern strength (amplitude) over
    every segment/quadrant/octant and channel, target 1 the standardised mean base brightness."""
    if num_targets not in (1, 2):
        raise ValueError(f"the synthetic regression targets are {', '.join(TARGET_NAMES)}: 1 or 2 targets, "
                         f"got {num_targets}")
    columns = [_mean_of_uniforms(np.abs(strength), *strength_range),
               _mean_of_uniforms(brightness, *brightness_range)][:num_targets]
    return np.stack(columns, axis=1).astype(np.float32)


def _check_target(target: str) -> None:
    if target not in ("classification", "regression"):
        raise ValueError(f"target must be 'classification' or 'regression', got {target!r}")


def _symbols(labels: np.ndarray, q: int, parts: int, evidence: float, rng) -> np.ndarray:
    """Per sample and part: the class's symbol with probability ``evidence``, else any other symbol."""
    n = len(labels)
    distractor = (labels[:, None] + rng.integers(1, q, (n, parts))) % q
    return np.where(rng.random((n, parts)) < evidence, labels[:, None], distractor)


# ------------------------------------------------------------------------------------------------
# 1D signals
# ------------------------------------------------------------------------------------------------

SEGMENTS_1D = 4
_TONES_1D = 12  # tones at fixed frequencies while 10 classes or fewer need no more
_FREQUENCY_1D = (1.0 / 16, 7.0 / 16)  # cycles per sample: 1 to 7 periods in a 16-sample segment
_STRENGTH_1D = (40.0, 80.0)
_BRIGHTNESS_1D = (88.0, 168.0)


def symbol_count_1d(num_classes: int) -> int:
    """Tones of ``synthetic1d``: one per class and two spare distractors."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes + 2


def frequencies_1d(num_classes: int) -> np.ndarray:
    """Frequency (cycles per sample) of each tone, symbol s = class s: evenly spaced over 1/16..7/16,
    the same 12 for any class count up to 10 (more classes: more, closer tones)."""
    count = max(_TONES_1D, symbol_count_1d(num_classes))
    return np.linspace(*_FREQUENCY_1D, count)


def synthetic1d(n: int, seed: int, num_classes: int = 10, length: int = 64, channels: int = 1,
                noise: float = 5.0, evidence: float = 0.65, target: str = "classification"
                ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` signals uint8 (n, length, channels) and int64 labels (n,) — or, with
    ``target="regression"``, float32 targets (n, num_classes) (``regression_targets``; the signals
    are those of 10 classes) — deterministic in the arguments.

    The signal is cut into 4 segments; each plays one tone (a sine at one of ``frequencies_1d``) at
    a random phase, base level and amplitude per channel, plus Gaussian noise.  A segment plays the
    class's tone with probability ``evidence``, else another one.  Reversing time (make_batch's
    flip) keeps every tone, so flip augmentation does not change the class.
    """
    _check_target(target)
    classes = 10 if target == "regression" else num_classes
    if n < 0 or length < SEGMENTS_1D * 2 or channels < 1 or not 0.0 <= evidence <= 1.0:
        raise ValueError(f"need n >= 0, length >= {SEGMENTS_1D * 2}, channels >= 1 and 0 <= evidence <= 1, "
                         f"got {n}, {length}, {channels}, {evidence}")
    q = symbol_count_1d(classes)
    frequency = frequencies_1d(classes)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
    symbols = _symbols(labels, q, SEGMENTS_1D, evidence, rng)
    phase = rng.uniform(0, 2 * np.pi, (n, SEGMENTS_1D, channels))
    base = rng.uniform(*_BRIGHTNESS_1D, (n, SEGMENTS_1D, channels))
    amplitude = rng.uniform(*_STRENGTH_1D, (n, SEGMENTS_1D, channels))

    segment = (np.arange(length) * SEGMENTS_1D) // length
    t = np.arange(length, dtype=np.float64)[None, :, None]
    signals = np.empty((n, length, channels), np.uint8)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(n, lo + _CHUNK))
        f = frequency[symbols[sl]][:, segment, None]  # (m, length, 1)
        wave = np.sin(2 * np.pi * f * t + phase[sl][:, segment])  # (m, length, channels)
        values = base[sl][:, segment] + amplitude[sl][:, segment] * wave
        values += rng.normal(0.0, noise, values.shape)
        signals[sl] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if target == "regression":
        return signals, regression_targets(amplitude, base, num_classes, _STRENGTH_1D, _BRIGHTNESS_1D)
    return signals, labels


# ------------------------------------------------------------------------------------------------
# 3D volumes
# ------------------------------------------------------------------------------------------------

OCTANTS = 8
# Wave directions (z, y, x).  A flip of the last axis (make_batch's "horizontal" flip) maps every
# entry onto itself: directions with x = 0 are single, the others come in mirror pairs of which a
# sample shows one at random.
_ORIENTATIONS_3D = (
    ((1, 0, 0),), ((0, 1, 0),), ((0, 0, 1),), ((1, 1, 0),), ((1, -1, 0),),
    ((1, 0, 1), (1, 0, -1)), ((0, 1, 1), (0, 1, -1)), ((1, 1, 1), (1, 1, -1)), ((1, -1, 1), (1, -1, -1)),
)
_PERIOD_3D = (2.8, 3.6)  # voxels, band 0; band b is 1.6**b times longer
_STRENGTH_3D = (30.0, 60.0)
_BRIGHTNESS_3D = (64.0, 192.0)


def symbol_count_3d(num_classes: int) -> int:
    """Patterns of ``synthetic3d``: 9 orientations per frequency band, whole bands, one spare at least."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    per_band = len(_ORIENTATIONS_3D)
    return per_band * -(-(num_classes + 1) // per_band)


def synthetic3d(n: int, seed: int, num_classes: int = 10, size: int = 16, channels: int = 1,
                noise: float = 30.0, evidence: float = 0.65, target: str = "classification"
                ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` volumes uint8 (n, size, size, size, channels) and int64 labels (n,) — or, with
    ``target="regression"``, float32 targets (n, num_classes) (the volumes of 10 classes) —
    deterministic in the arguments.

    Each octant shows one 3D plane wave (9 orientations x frequency bands) at a random period within
    its band, phase, base level and signed amplitude per channel, plus Gaussian noise; it shows the
    class's pattern with probability ``evidence``, else another one.
    """
    _check_target(target)
    classes = 10 if target == "regression" else num_classes
    if n < 0 or size < 4 or channels < 1 or not 0.0 <= evidence <= 1.0:
        raise ValueError(f"need n >= 0, size >= 4, channels >= 1 and 0 <= evidence <= 1, "
                         f"got {n}, {size}, {channels}, {evidence}")
    q = symbol_count_3d(classes)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
    symbols = _symbols(labels, q, OCTANTS, evidence, rng)
    orientation, band = symbols % len(_ORIENTATIONS_3D), symbols // len(_ORIENTATIONS_3D)
    mirror = rng.random((n, OCTANTS)) < 0.5
    table = np.array([[o[0], o[-1]] for o in _ORIENTATIONS_3D], dtype=np.float64)  # (9, 2, 3)
    direction = table[orientation, mirror.astype(np.int64)]
    direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    direction += rng.normal(0.0, 0.08, direction.shape)
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    period = rng.uniform(*_PERIOD_3D, (n, OCTANTS)) * 1.6 ** band
    phase = rng.uniform(0, 2 * np.pi, (n, OCTANTS))
    base = rng.uniform(*_BRIGHTNESS_3D, (n, OCTANTS, channels))
    amplitude = rng.uniform(*_STRENGTH_3D, (n, OCTANTS, channels)) * rng.choice([-1.0, 1.0], (n, OCTANTS, channels))

    half = size // 2
    zz, yy, xx = np.mgrid[0:size, 0:size, 0:size].astype(np.float64)
    octant = ((zz >= half) * 4 + (yy >= half) * 2 + (xx >= half)).astype(np.int64)
    wavevector = 2 * np.pi * direction / period[..., None]  # (n, 8, 3)
    volumes = np.empty((n, size, size, size, channels), np.uint8)
    chunk = max(1, _CHUNK * 32 * 32 // size ** 3)  # about as many voxels per chunk as the 2D set
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        k = wavevector[sl][:, octant]  # (m, s, s, s, 3)
        wave = np.sin(k[..., 0] * zz + k[..., 1] * yy + k[..., 2] * xx + phase[sl][:, octant])
        values = base[sl][:, octant] + amplitude[sl][:, octant] * wave[..., None]
        values += rng.normal(0.0, noise, values.shape)
        volumes[sl] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if target == "regression":
        return volumes, regression_targets(amplitude, base, num_classes, _STRENGTH_3D, _BRIGHTNESS_3D)
    return volumes, labels
