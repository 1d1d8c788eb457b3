"""The project's HDF5 image-set format: atomic writer, lazy per-process reader, checks.

Layout (one file, dimension-agnostic: 2D images, 1D signals and 3D volumes alike)::

    /images   uint8 (N, *spatial, C)   chunked one sample per chunk
    /labels   int64 (N,) class indices, or float32 (N, *target_shape) regression targets
              (then with attribute task="regression")
    /test/images, /test/labels         optional held-out split, same layout
    attrs: format="ddc_hpc.images", format_version=1, classes (list of str: class names, or target
           names for regression), num_classes (classes, or values per target), task
           ("classification" or "regression"), source, command, created (UTC, ISO 8601),
           checksum ("sha256:<hex>", see `content_checksum`)

The writer fills ``OUT.tmp<pid>`` in the destination folder, flushes and fsyncs it, then renames it
over ``OUT`` (and fsyncs the folder): an interrupted import never leaves a file under the final name.
Files written by other tools are read too, as long as they hold ``images`` (uint8) and ``labels``
(integers; or real numbers, read as regression targets when the job's task is regression); class
names then default to "0".."K-1" (target names to "target0"..).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path

import h5py
import numpy as np

from ..errors import BadInput
from ..files import publish, staging_path
from ..kinds import TASKS

FORMAT = "ddc_hpc.images"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
STORED_TASKS = ("classification", "regression")  # what a file's labels can be
_READ_BLOCK = 1024  # samples per block when streaming a whole split (checksums, means, info)


def _group_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return "/" if split == "train" else "/test"


def check_labels(labels: np.ndarray, num_classes: int | None, where: str) -> np.ndarray:
    """Labels as int64; BadInput unless they are integers in [0, num_classes)."""
    labels = np.asarray(labels)
    hint = " (if these are regression targets, set model.task = 'regression')"
    if labels.ndim != 1:
        raise BadInput(f"{where}: labels must be a 1-D array of class indices, got shape {labels.shape}"
                       + (hint if np.issubdtype(labels.dtype, np.number) else ""))
    if labels.dtype == bool or not (
        np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
    ):
        raise BadInput(f"{where}: labels must be integer class indices, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        if labels.size and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise BadInput(
                f"{where}: labels must be integer class indices, got non-integer values such as "
                f"{labels[~(np.isfinite(labels) & (labels == np.round(labels)))][:3].tolist()} "
                "(one-hot or soft labels are not supported: store argmax indices)" + hint
            )
    out = labels.astype(np.int64)
    if out.size:
        lo, hi = int(out.min()), int(out.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            raise BadInput(
                f"{where}: labels must lie in 0..{(num_classes or 0) - 1} "
                f"({num_classes} classes), found values from {lo} to {hi}"
            )
    return out


def check_targets(targets: np.ndarray, where: str) -> np.ndarray:
    """Regression targets as float32 (N, *target_shape), a 1-D array becoming (N, 1); BadInput
    unless they are finite real numbers."""
    targets = np.asarray(targets)
    if targets.ndim < 1:
        raise BadInput(f"{where}: regression targets must be an array (N,) or (N, *target_shape), got a scalar")
    if targets.dtype == bool or not (
        np.issubdtype(targets.dtype, np.integer) or np.issubdtype(targets.dtype, np.floating)
    ):
        raise BadInput(f"{where}: regression targets must be real numbers, got dtype {targets.dtype}")
    out = targets.astype(np.float32)
    if out.ndim == 1:
        out = out.reshape(-1, 1)
    if 0 in out.shape[1:]:
        raise BadInput(f"{where}: regression targets have shape {targets.shape}: no values per sample")
    bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise BadInput(f"{where}: regression targets must be finite numbers, but {int(bad.sum())} sample(s) have "
                       f"NaN or infinite targets (first: sample {first}, {out[first].ravel()[:4].tolist()})"
                       + (" — or values beyond float32's range" if np.isfinite(targets[first]).all() else ""))
    return out


def loose_labels(labels: np.ndarray, where: str) -> np.ndarray:
    """Labels an autoencoder ignores, as stored: integers as int64, floats as float32 (any values)."""
    labels = np.asarray(labels)
    if labels.ndim < 1:
        raise BadInput(f"{where}: labels must be an array with one entry per sample, got a scalar")
    if labels.dtype == bool or np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64)
    if np.issubdtype(labels.dtype, np.floating):
        return labels.astype(np.float32)
    raise BadInput(f"{where}: labels must be numbers, got dtype {labels.dtype}")


def guess_task(labels: np.ndarray) -> str:
    """What labels without a ``task`` attribute hold: float values that are not whole numbers, or
    more than one value per sample, are regression targets; anything else class indices."""
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.floating) and labels.size and (
            labels.ndim != 1 or not bool((np.isfinite(labels) & (labels == np.round(labels))).all())):
        return "regression"
    return "classification"


def check_task(task: str) -> str:
    if task not in TASKS:
        raise BadInput(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return task


class H5Writer:
    """Write a dataset file atomically; use as a context manager.

    ``append(split, images, labels)`` any number of times (per split, in order), then leaving the
    ``with`` block normally publishes the file; an exception (or KeyboardInterrupt) deletes the
    temporary file and leaves any previous ``path`` untouched.
    """

    def __init__(self, path, *, image_shape, classes, source: str, command: str = "",
                 compression: str | None = None, task: str = "classification"):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise BadInput(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        if compression not in (None, "gzip", "lzf"):
            raise BadInput(f"compression must be gzip, lzf or none, got {compression!r}")
        if task not in STORED_TASKS:
            raise BadInput(f"a dataset file holds classification or regression labels, not {task!r}")
        if not classes:
            raise BadInput(f"{self.path}: a dataset needs at least one class"
                           + (" (for regression: one name per target value)" if task == "regression" else ""))
        self.task = task
        self.image_shape = tuple(int(d) for d in image_shape)
        if len(self.image_shape) < 2 or min(self.image_shape) < 1:
            raise BadInput(f"images must be (*spatial, C) with at least one spatial axis, got {self.image_shape}")
        self.classes = [str(c) for c in classes]
        self.source, self.command, self.compression = source, command, compression
        self.tmp = staging_path(self.path)
        self._hash = {s: (hashlib.sha256(), hashlib.sha256()) for s in SPLITS}
        self._count = {s: 0 for s in SPLITS}
        try:
            self._file = h5py.File(self.tmp, "w")
        except OSError as exc:
            raise BadInput(f"cannot write {self.tmp}: {exc}") from None

    def append(self, split: str, images: np.ndarray, labels) -> None:
        images = np.asarray(images)
        where = f"{self.source} ({split})"
        if images.dtype != np.uint8:
            raise BadInput(f"{where}: images must be uint8 pixels (0..255), got dtype {images.dtype}")
        if images.shape[1:] != self.image_shape:
            raise BadInput(f"{where}: images must have shape (n, {', '.join(map(str, self.image_shape))}), "
                           f"got {images.shape}")
        if self.task == "regression":
            labels = check_targets(labels, where)
            if int(np.prod(labels.shape[1:])) != len(self.classes):
                raise BadInput(f"{where}: {int(np.prod(labels.shape[1:]))} target values per sample (shape "
                               f"{labels.shape[1:]}) but {len(self.classes)} target names {self.classes}")
        else:
            labels = check_labels(labels, len(self.classes), where)
        if len(labels) != len(images):
            raise BadInput(f"{where}: {len(images)} images but {len(labels)} labels")
        group = self._file.require_group(_group_name(split))
        if "images" not in group:
            group.create_dataset("images", shape=(0, *self.image_shape), maxshape=(None, *self.image_shape),
                                 chunks=(1, *self.image_shape), dtype=np.uint8, compression=self.compression)
            shape = labels.shape[1:]
            group.create_dataset("labels", shape=(0, *shape), maxshape=(None, *shape), chunks=(4096, *shape),
                                 dtype=labels.dtype)
            if self.task == "regression":
                group["labels"].attrs["task"] = "regression"
        elif group["labels"].shape[1:] != labels.shape[1:]:
            raise BadInput(f"{where}: targets of shape {labels.shape[1:]} after {group['labels'].shape[1:]}")
        start, n = self._count[split], len(images)
        for name, data in (("images", images), ("labels", labels)):
            group[name].resize(start + n, axis=0)
            group[name][start:start + n] = data
        images_hash, labels_hash = self._hash[split]
        images_hash.update(np.ascontiguousarray(images).tobytes())
        labels_hash.update(_label_bytes(labels))
        self._count[split] = start + n

    def _digest(self) -> str:
        return _combine({s: (h[0].hexdigest(), h[1].hexdigest()) for s, h in self._hash.items()
                         if self._count[s] or s == "train"})

    def commit(self) -> Path:
        if self._count["train"] == 0:
            raise BadInput(f"{self.source}: no training samples to write (empty dataset)")
        attrs = self._file.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["classes"] = np.array(self.classes, dtype=h5py.string_dtype())
        attrs["num_classes"] = len(self.classes)
        attrs["task"] = self.task
        attrs["source"] = self.source
        attrs["command"] = self.command
        attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        attrs["checksum"] = self._digest()
        self._file.flush()
        self._file.close()
        publish(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False


def _label_bytes(labels: np.ndarray) -> bytes:
    """What the checksum hashes: class indices as little-endian int64, targets as little-endian float32."""
    labels = np.asarray(labels)
    return np.ascontiguousarray(labels.astype("<f4" if np.issubdtype(labels.dtype, np.floating) else "<i8")).tobytes()


def _combine(parts: dict[str, tuple[str, str]]) -> str:
    """sha256 over "split:images-sha256:labels-sha256" lines, splits in file order."""
    text = "".join(f"{s}:{parts[s][0]}:{parts[s][1]}\n" for s in SPLITS if s in parts)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def content_checksum(path) -> str:
    """Recompute the checksum of a file's content (reads every sample once)."""
    parts = {}
    with open_h5(path) as f:
        for split in SPLITS:
            if split == "test" and "test" not in f:
                continue
            group = f[_group_name(split)]
            images_hash, labels_hash = hashlib.sha256(), hashlib.sha256()
            ds = group["images"]
            for start in range(0, len(ds), _READ_BLOCK):
                images_hash.update(np.ascontiguousarray(ds[start:start + _READ_BLOCK]).tobytes())
            labels_hash.update(_label_bytes(group["labels"][()]))
            parts[split] = (images_hash.hexdigest(), labels_hash.hexdigest())
    return _combine(parts)


def missing_file(path: Path, what: str = "data file") -> BadInput:
    """The error for a data file that is not there, saying how to make one."""
    where = "" if path.is_absolute() else f" (relative paths start at {Path.cwd()})"
    return BadInput(f"{what} {path} does not exist{where}. Check data.source (in the job file, or "
                    "--set data.source=h5:PATH); to build an HDF5 file from CIFAR-10/100, Food-101, an npz "
                    "or an image folder run `python -m ddc_hpc.data import KIND SOURCE OUT.h5` (with "
                    "--download for cifar10, cifar100 and food101 where there is internet); see docs/DATA.md")


def open_h5(path) -> h5py.File:
    """Open read-only; BadInput for a missing, unreadable or truncated file."""
    path = Path(path)
    if not path.exists():
        raise missing_file(path)
    if path.is_dir():
        raise BadInput(f"data file {path} is a folder, expected an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = str(exc).split("(")[0].strip() or "not an HDF5 file"
        raise BadInput(
            f"cannot read {path} as HDF5 ({reason}): the file is truncated, corrupt or not HDF5; "
            "re-create it with `python -m ddc_hpc.data import ...`"
        ) from None


class H5Meta:
    """What a file holds, read and checked once: classes, counts, shapes, labels, attributes.

    ``task``: what the reader wants ("classification", "regression", "autoencoder"; None: whatever
    the file holds).  ``self.task`` is what the labels are taken as — the file's ``task`` attribute
    when it has one (a mismatch with the wanted task is the loader's to report), else the wanted
    task, else a guess from the labels (``guess_task``).  Class labels are checked as class indices,
    regression targets as finite numbers (float32, (N, *target_shape)).
    """

    def __init__(self, path, task: str | None = None):
        self.path = Path(path)
        raw: dict[str, tuple[int, tuple, np.ndarray]] = {}
        stored = None
        with open_h5(self.path) as f:
            self.attrs = {k: _attr(v) for k, v in f.attrs.items()}
            stored = self.attrs.get("task")
            for split in SPLITS:
                if split == "test" and "test" not in f:
                    continue
                group = f[_group_name(split)]
                where = f"{self.path}:{group.name}"
                if "images" not in group or "labels" not in group:
                    raise BadInput(f"{where} has no 'images' and 'labels' datasets; "
                                   f"it holds {sorted(group.keys())} — not a ddc_hpc dataset file")
                images, labels = group["images"], group["labels"]
                if not isinstance(images, h5py.Dataset) or not isinstance(labels, h5py.Dataset):
                    raise BadInput(f"{where}: 'images' and 'labels' must be datasets")
                if images.dtype != np.uint8:
                    raise BadInput(f"{where}: images must be uint8, got {images.dtype}")
                if images.ndim < 3:
                    raise BadInput(f"{where}: images must be (N, *spatial, C) with at least one spatial "
                                   f"axis, got shape {images.shape}")
                try:
                    label_values = labels[()]
                except (OSError, TypeError) as exc:
                    raise BadInput(f"{where}: cannot read labels ({exc}); the file is corrupt") from None
                stored = stored or _attr(labels.attrs.get("task"))
                raw[split] = (images.shape[0], tuple(images.shape[1:]), label_values)
        if stored is not None and stored not in STORED_TASKS:
            raise BadInput(f"{self.path}: attribute task={stored!r}; expected classification or regression")
        self.stored_task = stored
        if stored is not None:
            self.task = stored
        elif task in STORED_TASKS:
            self.task = task
        else:
            self.task = guess_task(raw["train"][2])
        self.splits: dict[str, tuple[int, tuple, np.ndarray]] = {}
        for split, (n, shape, values) in raw.items():
            where = f"{self.path}:{_group_name(split)}"
            if task == "autoencoder":
                values = loose_labels(values, where)
            elif self.task == "regression":
                values = check_targets(values, where)
            else:
                values = check_labels(values, None, where)
            if len(values) != n:
                raise BadInput(f"{where}: {n} images but {len(values)} labels")
            self.splits[split] = (n, shape, values)
        if "test" in self.splits and self.splits["test"][1] != self.splits["train"][1]:
            raise BadInput(f"{self.path}: test images have shape {self.splits['test'][1]}, "
                           f"training images {self.splits['train'][1]}")
        if "test" in self.splits and self.splits["test"][2].shape[1:] != self.splits["train"][2].shape[1:]:
            raise BadInput(f"{self.path}: test targets have shape {self.splits['test'][2].shape[1:]}, "
                           f"training targets {self.splits['train'][2].shape[1:]}")
        classes = self.attrs.get("classes")
        if task == "autoencoder":  # labels unchecked: names as stored, or made up
            self.named = classes is not None
            if classes is not None:
                self.classes = [str(c) for c in np.atleast_1d(classes)]
            elif self.task == "regression":
                self.classes = [f"target{i}" for i in range(int(np.prod(self.target_shape)))]
            else:
                top = max((int(v[2].max()) for v in self.splits.values() if v[2].size), default=-1)
                self.classes = [str(i) for i in range(max(top + 1, 1))]
            return
        if self.task == "regression":
            size = int(np.prod(self.target_shape))
            names = None if classes is None else [str(c) for c in np.atleast_1d(classes)]
            if names is not None and len(names) != size:
                raise BadInput(f"{self.path}: {len(names)} target names {names} but {size} target values per sample")
            self.classes = names or [f"target{i}" for i in range(size)]
            self.named = names is not None
            return
        if classes is None:
            top = max((int(v[2].max()) for v in self.splits.values() if len(v[2])), default=-1)
            self.classes = [str(i) for i in range(int(self.attrs.get("num_classes", top + 1)))]
            self.named = False
        else:
            self.classes = [str(c) for c in np.atleast_1d(classes)]
            self.named = True
        for split, (_, _, labels) in self.splits.items():
            check_labels(labels, len(self.classes), f"{self.path} ({split})")

    @property
    def image_shape(self) -> tuple:
        return self.splits["train"][1]

    @property
    def target_shape(self) -> tuple:
        """Per-sample shape of the labels: () for class indices, (T, ...) for regression targets."""
        return tuple(self.splits["train"][2].shape[1:])


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class H5Store:
    """One split of a file, read lazily: the h5py handle opens on the first read in each process.

    Picklable (the handle is dropped) and fork-safe (a process that did not open the handle reopens
    it), so it works unchanged in DataLoader workers and MPI ranks.  Reads are read-only and never
    take more than the requested samples; consecutive indices are read as one slice.
    """

    def __init__(self, path, split: str, labels: np.ndarray, image_shape: tuple):
        self.path, self.split = str(path), split
        self.labels, self.image_shape = labels, tuple(image_shape)
        self.description = f"h5:{self.path}" + ("" if split == "train" else f" ({split})")
        self._file, self._pid = None, None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def _images(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open_h5(self.path), os.getpid()
        return self._file[_group_name(self.split)]["images"]

    def read(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        unique = np.unique(index)
        buf = np.empty((len(unique), *self.image_shape), np.uint8)
        if not len(unique):
            return buf
        if unique[0] < 0 or unique[-1] >= len(self):
            raise IndexError(f"sample index out of range 0..{len(self) - 1} in {self.description}")
        ds = self._images()
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        starts = np.concatenate(([0], breaks)).tolist()
        stops = np.concatenate((breaks, [len(unique)])).tolist()
        try:
            for a, b in zip(starts, stops):
                lo = int(unique[a])
                ds.read_direct(buf, np.s_[lo:lo + (b - a)], np.s_[a:b])
        except OSError as exc:
            raise BadInput(f"cannot read samples from {self.path}: {exc} (file corrupt or truncated?)") from None
        if len(unique) == len(index) and (len(index) < 2 or bool((np.diff(index) > 0).all())):
            return buf
        return buf[np.searchsorted(unique, index)]  # back to the requested order (and repeats)

    def read_all(self) -> np.ndarray:
        ds = self._images()
        out = np.empty(ds.shape, np.uint8)
        try:
            ds.read_direct(out)
        except OSError as exc:
            raise BadInput(f"cannot read {self.path}: {exc} (file corrupt or truncated?)") from None
        return out
