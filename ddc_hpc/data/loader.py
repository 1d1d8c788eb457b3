"""``load_dataset``: a source string -> train/validation SampleSets, class names, training mean."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ..config import recorded_split_seed
from ..errors import BadInput
from .hdf5 import check_task
from .sources import ArrayStore, FileStore, open_raw

MEAN_SAMPLES = 10_000  # a lazily read training set's mean is estimated from this many samples


class SampleSet:
    """A read-only view of a subset of one split's samples.

    ``labels`` (this subset's, in memory: int64 (N,) class indices, or float32 (N, *target_shape)
    regression targets) and ``image_shape`` ``(*spatial, C)``; ``read(indices)`` -> uint8
    (n, *spatial, C) and the labels as torch tensors (int64 (n,) or float32 (n, *target_shape)),
    samples exactly as stored, indices relative to this subset. Picklable; file handles open
    lazily per process.
    """

    def __init__(self, store, index: np.ndarray | None = None, name: str = ""):
        self._store = store
        self._index = None if index is None else np.asarray(index, dtype=np.int64)
        self.labels: np.ndarray = store.labels if index is None else store.labels[self._index]
        self.image_shape: tuple = tuple(store.image_shape)
        self.name = name or getattr(store, "description", "")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"SampleSet({self.name!r}, n={len(self)}, image_shape={self.image_shape})"

    @property
    def target_shape(self) -> tuple:
        """Per-sample shape of ``labels``: () for class indices, e.g. (2,) for two regression targets."""
        return tuple(self.labels.shape[1:])

    @property
    def in_memory(self) -> bool:
        return isinstance(self._store, ArrayStore)

    def _global(self, indices) -> np.ndarray:
        local = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(local) and (local.min() < 0 or local.max() >= len(self)):
            raise IndexError(f"indices must lie in 0..{len(self) - 1}, got {local.min()}..{local.max()}")
        return local if self._index is None else self._index[local]

    def read(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        local = np.asarray(indices, dtype=np.int64).reshape(-1)
        images = np.ascontiguousarray(self._store.read(self._global(local)))
        if not images.flags.writeable:
            images = images.copy()
        labels = self.labels[local]
        labels = labels.astype(np.float32 if np.issubdtype(labels.dtype, np.floating) else np.int64)
        return torch.from_numpy(images), torch.from_numpy(labels)

    def subset(self, indices) -> SampleSet:
        """A view of some of this view's samples (indices relative to this view)."""
        return SampleSet(self._store, self._global(indices), self.name)

    def digest(self) -> str:
        """Which samples of the store this view holds: a hash of their positions (the whole store: of
        its length), so two runs' records show whether they scored the same images."""
        positions = np.arange(len(self._store), dtype=np.int64) if self._index is None else self._index
        return "sha256:" + hashlib.sha256(positions.astype("<i8").tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Splits:
    train: SampleSet
    val: SampleSet
    classes: list[str]  # class names; for regression the target names (one per output)
    mean: torch.Tensor | None  # (C,) per-channel training mean in [0, 1] units; None: metadata only
    task: str = "classification"  # as asked of load_dataset
    # what `val` is: the source's own "test" split, a "validation" share of train, or (tune) the "tuning" split
    held_out: str = "validation"
    # data.tuning_size images carved from the training split (never trained on): what a tuning trial scores
    tuning: SampleSet | None = None

    def record(self, split_seed: int) -> dict:
        """results.json's `splits`: the seed that drew them, each split's size and a digest of its
        samples, and which one the run scored."""
        sets = {"train": self.train, "scored": self.val} | ({"tuning": self.tuning} if self.tuning is not None else {})
        return {"split_seed": split_seed, "scored_split": self.held_out} | {
            name: {"size": len(samples), "digest": samples.digest()} for name, samples in sets.items()}


def _stratified_pick(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` positions of `labels`, each class in proportion to its size (largest remainders),
    chosen at random within the class; sorted."""
    n = len(labels)
    count = min(max(count, 0), n)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    exact = sizes * (count / n) if n else sizes * 0.0
    take = np.floor(exact).astype(np.int64)
    remainder = count - int(take.sum())
    if remainder > 0:
        order = np.lexsort((np.arange(len(classes)), -(exact - take)))  # largest fraction first, stable
        take[order[:remainder]] += 1
    picked = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        picked.append(rng.permutation(members)[: take[c]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _pick(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified for class indices, a plain seeded random choice (sorted) for regression targets."""
    if labels.ndim == 1 and not np.issubdtype(labels.dtype, np.floating):
        return _stratified_pick(labels, count, rng)
    return np.sort(rng.permutation(len(labels))[: min(max(count, 0), len(labels))])


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, validation positions), seeded, each class split in the same proportion
    (regression targets, float (N, ...): a seeded random split)."""
    rng = np.random.default_rng([seed, 0])
    val = _pick(labels, int(round(len(labels) * val_fraction)), rng)
    mask = np.ones(len(labels), bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def _statistics_sample(images: SampleSet, seed: int, max_samples: int | None, what: str) -> np.ndarray:
    """Indices the training statistics read: all of an in-memory or small set, else a seeded sample."""
    n = len(images)
    if n == 0:
        raise BadInput(f"cannot compute the training {what} of an empty training set")
    if not images.in_memory and max_samples is not None and n > max_samples:
        return np.sort(np.random.default_rng([seed, 2]).choice(n, max_samples, replace=False))
    return np.arange(n)


def channel_mean(images: SampleSet, seed: int = 0, max_samples: int | None = MEAN_SAMPLES) -> torch.Tensor:
    """Per-channel mean in [0, 1] units: exact when the set is in memory or small, else estimated
    from ``max_samples`` seeded samples (every rank gets the same value: integer sums)."""
    index = _statistics_sample(images, seed, max_samples, "mean")
    total = np.zeros(images.image_shape[-1], np.int64)
    for start in range(0, len(index), 4096):
        pixels = images.read(index[start:start + 4096])[0].numpy()
        total += pixels.reshape(-1, pixels.shape[-1]).sum(0, dtype=np.int64)
    pixels_per_channel = len(index) * int(np.prod(images.image_shape[:-1]))
    return torch.tensor(total / (pixels_per_channel * 255.0), dtype=torch.float32)


def channel_std(images: SampleSet, seed: int = 0, max_samples: int | None = MEAN_SAMPLES) -> torch.Tensor:
    """Per-channel standard deviation in [0, 1] units (exact from per-channel histograms of the
    same samples ``channel_mean`` uses), for ``make_batch(std=...)``: signals and volumes whose
    values span a small part of 0..255 (an Elman RNN learns far faster from unit-scale inputs).
    A constant channel gets 1 (no scaling)."""
    index = _statistics_sample(images, seed, max_samples, "std")
    channels = images.image_shape[-1]
    counts = np.zeros((channels, 256), np.int64)
    for start in range(0, len(index), 4096):
        pixels = images.read(index[start:start + 4096])[0].numpy().reshape(-1, channels)
        for c in range(channels):
            counts[c] += np.bincount(pixels[:, c], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(1)
    mean = counts @ values / total
    var = counts @ values ** 2 / total - mean ** 2
    std = np.sqrt(np.maximum(var, 0.0))
    return torch.tensor(np.where(std > 0, std, 1.0), dtype=torch.float32)


def load_dataset(source: str, *, num_classes: int | None, val_fraction: float, seed: int,
                 limit: int | None = None, in_memory: bool = True, val_limit: int | None = None,
                 task: str = "classification", metadata_only: bool = False, copies_per_node: int = 1,
                 tuning_size: int = 0, tune: bool = False) -> Splits:
    """Open ``source`` and split it into training and validation sets.

    The validation set is the source's own test split when it has one (HDF5 ``test`` group,
    npz ``x_test``, CIFAR's test batch, Food-101's test list, ImageFolder's test/ or val/),
    else a seeded stratified ``val_fraction`` of the training split.  ``tuning_size`` carves a
    seeded stratified tuning split of that many samples out of the training split (disjoint from
    training and validation); ``tune`` makes it the split scored (``val``) in place of validation.
    ``limit`` keeps a seeded stratified choice of that many training samples (``val_limit``
    likewise for the scored split). ``seed`` draws every split (``data.split_seed``), so the
    splits do not move with the training seed.
    ``in_memory``: hold npz/HDF5/CIFAR data in memory (HDF5 only if the ``copies_per_node``
    processes of this node that each hold one take at most a quarter of the available memory
    together); otherwise every process reads only the samples it asks for.

    ``task``: "classification" (labels are class indices in 0..num_classes-1), "regression"
    (labels are finite float32 targets (N, *target_shape) with num_classes values per sample;
    splits and limits are seeded random, not stratified) or "autoencoder" (labels are returned as
    stored and not checked against num_classes; the pipeline trains on the samples themselves).
    Every problem with the data raises BadInput here, before any training.

    ``metadata_only`` (a dry run): check shapes, counts, classes and labels without reading the
    samples (files are opened lazily, no training mean is computed: ``mean`` is None).
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise BadInput(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    for name, value in (("limit", limit), ("val_limit", val_limit)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise BadInput(f"{name} must be a positive number of samples, got {value!r}")
    if num_classes is not None and (not isinstance(num_classes, (int, np.integer)) or num_classes < 1):
        raise BadInput(f"num_classes must be a positive integer, got {num_classes!r}")
    check_task(task)
    if task == "autoencoder":
        num_classes = None  # the model reconstructs its input: the labels are not its outputs
    raw = open_raw(source, in_memory=in_memory and not metadata_only, num_classes=num_classes, task=task,
                   copies_per_node=copies_per_node)
    classes = list(raw.classes)
    if len(raw.train) == 0:
        raise BadInput(f"{raw.description}: the dataset is empty (no training samples)")
    if task == "classification" and raw.task == "regression":
        raise BadInput(f"{raw.description} holds regression targets ({', '.join(classes)}), not class labels: "
                       "set model.task = 'regression' (or use a classification dataset)")
    if task == "regression" and raw.task != "regression":
        hint = (" (add target=regression to a synthetic source, e.g. synthetic1d:target=regression)"
                if source.strip().startswith("synthetic") else "")
        raise BadInput(f"{raw.description} holds class labels, not regression targets: model.task = 'regression' "
                       f"needs float targets{hint}")
    if task == "regression" and num_classes is not None:
        size = int(np.prod(raw.train.labels.shape[1:]))
        if size != num_classes:
            raise BadInput(f"{raw.description} has {size} regression target value(s) per sample (target shape "
                           f"{tuple(raw.train.labels.shape[1:])}: {', '.join(classes)}) but the model is built for "
                           f"num_classes={num_classes} outputs: the target size must equal num_classes; set "
                           f"model.num_classes = {size} or use the matching dataset")
    elif task == "classification" and num_classes is not None and len(classes) != num_classes:
        named = any(c != str(i) for i, c in enumerate(classes))
        hint = "" if named else (
            f" (without class names the count is the largest label + 1 = {len(classes)}; store the class "
            "names — an npz 'classes' array, or import with --classes — if some classes have no samples)")
        raise BadInput(f"{raw.description} has {len(classes)} classes but the model is built for "
                       f"num_classes={num_classes}: set model.num_classes = {len(classes)} or use the "
                       f"matching dataset{hint}")
    spatial = raw.train.image_shape[:-1]
    if min(spatial, default=0) < 1 or raw.train.image_shape[-1] < 1:
        raise BadInput(f"{raw.description}: images have shape {raw.train.image_shape}; need (*spatial, C)")
    for store in (raw.train, raw.test):
        if isinstance(store, FileStore):
            store.check_sizes()

    if raw.test is not None and len(raw.test):
        train, val = SampleSet(raw.train, None, raw.description), SampleSet(raw.test, None, raw.description + " (test)")
    else:
        train_idx, val_idx = stratified_split(raw.train.labels, float(val_fraction), seed)
        if len(train_idx) == 0:
            raise BadInput(f"{raw.description}: val_fraction={val_fraction} leaves no training samples")
        train = SampleSet(raw.train, train_idx, raw.description)
        val = SampleSet(raw.train, val_idx, raw.description + " (validation)")
    held_out = "test" if raw.test is not None and len(raw.test) else "validation"
    tuning = None
    if tuning_size:
        if tuning_size >= len(train):
            raise BadInput(f"{raw.description}: data.tuning_size = {tuning_size} leaves no training samples of "
                           f"the {len(train)}; give a tuning split of a few percent of them")
        picked = _pick(train.labels, int(tuning_size), np.random.default_rng([seed, 4]))
        rest = np.ones(len(train), bool)
        rest[picked] = False
        train, tuning = train.subset(np.flatnonzero(rest)), train.subset(picked)
        tuning.name = raw.description + " (tuning)"
    if tune:
        if tuning is None:
            raise BadInput("tune scores the tuning split: it needs a tuning_size")
        val, held_out = tuning, "tuning"
    if limit is not None and limit < len(train):
        train = train.subset(_pick(train.labels, int(limit), np.random.default_rng([seed, 1])))
    if val_limit is not None and val_limit < len(val):
        val = val.subset(_pick(val.labels, int(val_limit), np.random.default_rng([seed, 3])))
    mean = None if metadata_only else channel_mean(train, seed)
    return Splits(train=train, val=val, classes=classes, mean=mean, task=task, held_out=held_out, tuning=tuning)


def load_from_config(config, **options) -> Splits:
    """The splits a run's `config` (a ddc_hpc.config.Config) trains and validates on.

    The training run, evaluate --run and visualize all load through here, so they see the same
    samples in the same split with the same mean; `options` go to load_dataset (metadata_only).
    """
    return load_dataset(config.data.source, num_classes=config.model.num_classes,
                        val_fraction=config.data.val_fraction, limit=config.data.limit or None,
                        val_limit=config.data.val_limit or None, in_memory=config.data.in_memory, task=config.model.task,
                        **split_options(dataclasses.asdict(config.data), dataclasses.asdict(config.run)), **options)


def split_options(data: dict, run: dict) -> dict:
    """load_dataset's seed, tuning_size and tune for a run's [data] and [run] sections (dicts, as
    recorded in config.toml or a saved network)."""
    return {"seed": recorded_split_seed(data, run), "tuning_size": data.get("tuning_size", 0),
            "tune": data.get("tune", False)}
