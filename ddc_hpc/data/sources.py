"""Readers for every kind of source: they turn a source into class names and one or two *stores*.

A store is a split of a dataset that can hand out samples by index:

    store.labels        int64 (N,) class indices, or float32 (N, *target_shape) regression targets; in memory
    store.image_shape   (*spatial, C)
    store.read(index)   uint8 (len(index), *spatial, C), in the order of `index`, exactly as stored
    len(store)

Kinds: ``synthetic`` (2D images), ``synthetic1d`` (signals), ``synthetic3d`` (volumes), ``npz``,
``h5``, ``cifar10``, ``cifar100``, ``food101``, ``imagefolder``.
The importers (``importers.py``) copy any of them into the HDF5 format; the loader (``loader.py``)
reads any of them directly.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..kinds import KINDS, SYNTHETIC_KINDS, parse_source
from .hdf5 import H5Meta, H5Store, check_labels, check_targets, guess_task, loose_labels, missing_file

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SYNTHETIC_DEFAULTS = {"n": 2000, "seed": 0, "size": 32, "noise": 40.0, "evidence": 0.65}
SYNTHETIC1D_DEFAULTS = {"n": 2000, "seed": 0, "length": 64, "channels": 1, "noise": 5.0, "evidence": 0.65}
SYNTHETIC3D_DEFAULTS = {"n": 1000, "seed": 0, "size": 16, "channels": 1, "noise": 30.0, "evidence": 0.65}
_SYNTHETIC_OPTIONS = {"synthetic": SYNTHETIC_DEFAULTS, "synthetic1d": SYNTHETIC1D_DEFAULTS,
                      "synthetic3d": SYNTHETIC3D_DEFAULTS}
FOOD101_SIZE = 224  # the paper's input size


class ArrayStore:
    """A split held in memory as one uint8 array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, description: str):
        self.images, self.labels = images, labels
        self.image_shape = tuple(images.shape[1:])
        self.description = description

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index) -> np.ndarray:
        return self.images[np.asarray(index, dtype=np.int64)]

    def read_all(self) -> np.ndarray:
        return self.images


class FileStore:
    """A split of image files decoded on demand (PIL), optionally resized and center-cropped.

    ``size``: resize the shorter side to ``size`` px (bilinear) and crop the central size x size
    square, as torchvision's Resize(size) + CenterCrop(size); None keeps the stored size, which
    must then be the same for every image.
    """

    def __init__(self, paths: Sequence[str], labels: np.ndarray, size: int | None, description: str,
                 workers: int = 1):
        self.paths, self.labels, self.size = list(paths), labels, size
        self.description, self.workers = description, max(1, int(workers))
        if size is not None:
            self.image_shape = (size, size, 3)
        elif self.paths:
            self.image_shape = decode_image(self.paths[0], None).shape
        else:
            self.image_shape = (0, 0, 3)

    def __len__(self) -> int:
        return len(self.labels)

    def _decode(self, i: int) -> np.ndarray:
        image = decode_image(self.paths[i], self.size)
        if image.shape != self.image_shape:
            raise BadInput(
                f"{self.paths[i]} is {image.shape[1]}x{image.shape[0]} but {self.paths[0]} is "
                f"{self.image_shape[1]}x{self.image_shape[0]}: images of different sizes need "
                "--size N (import) or '?size=N' (source string) to resize and center-crop them"
            )
        return image

    def read(self, index) -> np.ndarray:
        index = [int(i) for i in np.asarray(index, dtype=np.int64)]
        out = np.empty((len(index), *self.image_shape), np.uint8)
        if self.workers > 1 and len(index) > 1:
            with ThreadPoolExecutor(self.workers) as pool:  # PIL releases the GIL while decoding
                for j, image in enumerate(pool.map(self._decode, index)):
                    out[j] = image
        else:
            for j, i in enumerate(index):
                out[j] = self._decode(i)
        return out

    def check_sizes(self) -> None:
        """BadInput unless every file has the same size (reads headers only)."""
        if self.size is not None or not self.paths:
            return
        from PIL import Image

        h, w = self.image_shape[:2]
        for path in self.paths:
            try:
                with Image.open(path) as im:
                    if im.size != (w, h):
                        raise BadInput(
                            f"{path} is {im.size[0]}x{im.size[1]} but {self.paths[0]} is {w}x{h}: images "
                            "of different sizes need '?size=N' in the source (e.g. imagefolder:ROOT?size=224) "
                            "or an import with --size N"
                        )
            except OSError as exc:
                raise BadInput(f"cannot read image {path}: {exc}") from None


def decode_image(path: str, size: int | None) -> np.ndarray:
    """RGB uint8 (H, W, 3); with ``size``: shorter side resized to size, central square cropped."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if size is not None:
                w, h = im.size
                short = min(w, h)
                im.draft("RGB", (max(1, w * size // short), max(1, h * size // short)))  # fast JPEG downscale
            im = im.convert("RGB")
            if size is not None:
                w, h = im.size
                if w <= h:
                    new = (size, int(size * h / w))
                else:
                    new = (int(size * w / h), size)
                if new != (w, h):
                    im = im.resize(new, Image.Resampling.BILINEAR)
                w, h = im.size
                top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
                im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"cannot read image {path}: {exc}") from None


@dataclass
class RawData:
    classes: list[str]  # class names, or target names for regression
    train: object
    test: object | None
    description: str
    task: str = "classification"  # what the labels are: "classification" or "regression"


def resolve_source(source: str, base: str | Path | None) -> str:
    """`source` with a relative path made absolute against `base` (the directory the run that
    named it started in), so it names the same data from any working directory."""
    kind, arg, _ = parse_source(source)
    if not arg or base is None or Path(arg).is_absolute():
        return source
    text = source.strip()
    prefix = f"{kind}:" if text.startswith(f"{kind}:") and text.partition(":")[0] in KINDS else ""  # else a bare path
    return prefix + str(Path(base, arg).resolve()) + text[len(prefix) + len(arg):]


DIGEST_CONTENT_LIMIT = 1 << 30  # bytes: a folder holding more is identified by its file names and sizes


def source_identity(source: str, base: str | Path | None = None) -> dict:
    """What data `source` names, however it is written: kind, options, the resolved path (relative
    paths start at `base`, default the working directory) and a digest of the content (an HDF5
    file's recorded content checksum; an npz file's bytes; a folder's files, or for folders above
    DIGEST_CONTENT_LIMIT their names and sizes; None for synthetic sets, which their options fix)."""
    import hashlib

    kind, arg, options = parse_source(source)
    path = Path(base or ".", arg).resolve() if arg else None
    digest = None
    if path is not None and path.is_file():
        recorded = H5Meta(path).attrs.get("checksum") if kind == "h5" else None
        digest = str(recorded) if recorded else _file_digest(hashlib.sha256(), path)
    elif path is not None and path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        hashed = hashlib.sha256()
        content = sum(p.stat().st_size for p in files) <= DIGEST_CONTENT_LIMIT
        for file in files:
            hashed.update(f"{file.relative_to(path)}\0{file.stat().st_size}\0".encode())
            if content:
                _file_digest(hashed, file)
        digest = ("sha256:" if content else "sha256-names-sizes:") + hashed.hexdigest()
    return {"kind": kind, "path": None if path is None else str(path), "options": options, "digest": digest}


def _file_digest(hashed, path: Path) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            hashed.update(block)
    return "sha256:" + hashed.hexdigest()


def same_data(a: dict, b: dict) -> bool:
    """Whether two source identities name the same data: same kind and options, and the same
    content digest (a copy elsewhere is the same data), or the same path where there is none."""
    if (a["kind"], a["options"]) != (b["kind"], b["options"]):
        return False
    if a["digest"] is not None and b["digest"] is not None:
        return a["digest"] == b["digest"]
    return a["path"] == b["path"]


def _int_option(options, key, source):
    if key not in options:
        return None
    value = options.pop(key)
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"data source {source!r}: option {key} must be an integer, got {value!r}") from None


def _no_more_options(options, source):
    if options:
        raise BadInput(f"data source {source!r}: unknown option(s) {', '.join(sorted(options))}")


# ----------------------------------------------------------------------------------------- readers


def open_raw(source: str, *, in_memory: bool = True, num_classes: int | None = None, size: int | None = None,
             download: bool = False, workers: int = 1, task: str | None = None, copies_per_node: int = 1) -> RawData:
    """Open any source; ``size`` (file sources only) overrides a '?size=' option; ``copies_per_node``:
    the processes of this node that open it too (each holds its own copy of what is held in memory).

    ``task``: how to take labels that do not say what they are (npz, HDF5 files without a ``task``
    attribute): "classification" (class indices), "regression" (float targets), "autoencoder"
    (either, as they look); None guesses from the labels (``guess_task``).  Synthetic sources give
    what their ``target`` option says, class-folder and CIFAR sources give classes; the result's
    ``task`` says what was read, and the loader reports a mismatch."""
    kind, arg, options = parse_source(source)
    if size is not None and kind not in ("food101", "imagefolder"):
        raise BadInput(f"--size applies to food101 and imagefolder sources, not {kind}")
    if kind in SYNTHETIC_KINDS:
        return _open_synthetic(kind, options, source, num_classes)
    if kind == "npz":
        _no_more_options(options, source)
        return open_npz(arg, num_classes, task, in_memory)
    if kind == "h5":
        _no_more_options(options, source)
        return open_h5_source(arg, in_memory, task, copies_per_node)
    if kind in ("cifar10", "cifar100"):
        _no_more_options(options, source)
        return open_cifar(arg, kind, download)
    size = size if size is not None else _int_option(options, "size", source)
    _no_more_options(options, source)
    if size is not None and size < 1:
        raise BadInput(f"size must be a positive number of pixels, got {size}")
    if kind == "food101":
        return open_food101(arg, size or FOOD101_SIZE, download, workers)
    return open_imagefolder(arg, size, workers)


def _open_synthetic(kind, options, source, num_classes) -> RawData:
    """``synthetic``, ``synthetic1d``, ``synthetic3d`` with their options, plus ``classes`` (the class
    count; for regression the number of targets, 1 or 2) and ``target`` (classification, regression)."""
    from .synthetic import TARGET_NAMES, synthetic, synthetic1d, synthetic3d

    defaults = _SYNTHETIC_OPTIONS[kind]
    opts = dict(defaults)
    options = dict(options)
    target = options.pop("target", "classification")
    if target not in ("classification", "regression"):
        raise BadInput(f"data source {source!r}: target must be classification or regression, got {target!r}")
    regression = target == "regression"
    classes = num_classes or (len(TARGET_NAMES) if regression else 10)
    try:
        for key, value in options.items():
            if key in ("classes", "num_classes") or (regression and key == "targets"):
                classes = int(value)
            elif key in opts:
                opts[key] = type(defaults[key])(value)
            else:
                raise BadInput(f"data source {source!r}: unknown option {key!r} "
                               f"({kind} takes {', '.join(defaults)}, classes, target)")
    except ValueError:
        raise BadInput(f"data source {source!r}: options must be numbers, e.g. {kind}:n=5000,seed=1") from None
    spatial = {"synthetic": ("size", 4), "synthetic1d": ("length", 8), "synthetic3d": ("size", 4)}[kind]
    if (opts["n"] < 1 or opts[spatial[0]] < spatial[1] or opts.get("channels", 1) < 1 or classes < 1
            or not 0 <= opts["evidence"] <= 1 or opts["noise"] < 0):
        raise BadInput(f"data source {source!r}: need n >= 1, {spatial[0]} >= {spatial[1]}"
                       + (", channels >= 1" if "channels" in opts else "")
                       + ", noise >= 0, 0 <= evidence <= 1 and a class")
    if regression and classes > len(TARGET_NAMES):
        raise BadInput(f"data source {source!r}: the synthetic regression targets are "
                       f"{' and '.join(TARGET_NAMES)}, so the model can have 1 or 2 outputs "
                       f"(num_classes), not {classes}")
    make = {"synthetic": synthetic, "synthetic1d": synthetic1d, "synthetic3d": synthetic3d}[kind]
    samples, labels = make(num_classes=classes, target=target, **opts)
    desc = f"{kind}:" + ",".join(f"{k}={v}" for k, v in {**opts, "classes": classes}.items())
    if regression:
        desc += ",target=regression"
    names = list(TARGET_NAMES[:classes]) if regression else [f"class{i}" for i in range(classes)]
    return RawData(names, ArrayStore(samples, labels, desc), None, desc, target)


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise missing_file(path, what)
    if not path.is_file():
        raise BadInput(f"{what} {path} is not a file")
    return path


class DeferredArray:
    """A compressed npz member: shape and dtype from its header now, the data read (whole) only
    when first indexed, so that a dry run or a metadata check never decompresses it."""

    def __init__(self, path: Path, key: str, shape: tuple, dtype: np.dtype):
        self.path, self.key, self.shape, self.dtype = path, key, tuple(shape), dtype
        self._data = None

    ndim = property(lambda self: len(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if self._data is None:
            with np.load(self.path, allow_pickle=False) as z:
                self._data = np.ascontiguousarray(z[self.key])
        return self._data[index]


def _npz_images(path: Path, z, key: str, in_memory: bool):
    """One image array of an npz: read whole; or, with ``in_memory=False``, memory-mapped when
    stored uncompressed (np.savez), deferred until first use when compressed (np.savez_compressed),
    so that only a header is read up front."""
    if in_memory:
        return np.ascontiguousarray(z[key])
    info = z.zip.getinfo(f"{key}.npy")
    with z.zip.open(info) as member:
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(member))
        if read_header is None:
            return np.ascontiguousarray(z[key])
        shape, fortran, dtype = read_header(member)
        header = member.tell()
    if info.compress_type != zipfile.ZIP_STORED:
        return DeferredArray(path, key, shape, dtype)
    with open(path, "rb") as f:  # the member's data follows its local file header in the archive
        f.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(f.read(4), "<u2")
    offset = info.header_offset + 30 + int(name_length) + int(extra_length) + header
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def open_npz(path, num_classes: int | None = None, task: str | None = None, in_memory: bool = True) -> RawData:
    """npz with ``x`` (N, *spatial, C) uint8 and ``y``; or ``x_train``/``y_train`` (+ ``x_test``/
    ``y_test``, the test split); optional ``classes`` (array of names: classes, or targets).

    ``y`` holds class indices, or regression targets (N,) / (N, *target_shape) — see ``open_raw``
    for how ``task`` decides which. ``in_memory=False`` maps the images instead of reading them."""
    path = _require_file(Path(path), "npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if {"x", "y"} <= keys:
                parts = {"train": (_npz_images(path, z, "x", in_memory), z["y"])}
            elif {"x_train", "y_train"} <= keys:
                parts = {"train": (_npz_images(path, z, "x_train", in_memory), z["y_train"])}
                if {"x_test", "y_test"} <= keys:
                    parts["test"] = (_npz_images(path, z, "x_test", in_memory), z["y_test"])
            else:
                raise BadInput(f"{path} holds arrays {sorted(keys)}; expected 'x' and 'y' "
                               "(or 'x_train', 'y_train' and optionally 'x_test', 'y_test')")
            names = [str(c) for c in z["classes"]] if "classes" in keys else None
    except BadInput:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise BadInput(f"cannot read {path} as npz ({type(exc).__name__}: {exc}): the file is "
                       "truncated, corrupt or not an npz archive") from None
    loose = task == "autoencoder"  # labels ignored: taken as stored
    if task not in ("classification", "regression"):
        task = guess_task(parts["train"][1])
    stores, shape, target_shape = {}, None, None
    for split, (x, y) in parts.items():
        where = f"{path} ({split})"
        if x.dtype != np.uint8:
            raise BadInput(f"{where}: images must be uint8 pixels 0..255, got {x.dtype}"
                           + (" — convert with (x * 255).round().astype(np.uint8) if values are in [0, 1]"
                              if np.issubdtype(x.dtype, np.floating) else ""))
        if x.ndim < 3:
            raise BadInput(f"{where}: images must be (N, *spatial, C), e.g. (N, H, W, C), got shape {x.shape}"
                           " (for grayscale add a channel axis: x[..., None])")
        if shape is not None and x.shape[1:] != shape:
            raise BadInput(f"{path}: test images are {x.shape[1:]}, training images {shape}")
        shape = x.shape[1:]
        if loose:
            labels = loose_labels(y, where)
        elif task == "regression":
            labels = check_targets(y, where)
            if target_shape is not None and labels.shape[1:] != target_shape:
                raise BadInput(f"{path}: test targets have shape {labels.shape[1:]}, training targets {target_shape}")
            target_shape = labels.shape[1:]
        else:
            labels = check_labels(y, len(names) if names else num_classes, where)
        if len(labels) != len(x):
            raise BadInput(f"{where}: {len(x)} images but {len(labels)} labels")
        stores[split] = ArrayStore(x, labels, f"npz:{path}")
    if loose:
        if names is None and np.issubdtype(stores["train"].labels.dtype, np.floating):
            names = [f"target{i}" for i in range(int(np.prod(stores["train"].labels.shape[1:])))]
        elif names is None:
            top = max((int(s.labels.max()) for s in stores.values() if s.labels.size), default=-1)
            names = [str(i) for i in range(max(top + 1, 1))]
    elif task == "regression":
        size = int(np.prod(target_shape))
        if names is not None and len(names) != size:
            raise BadInput(f"{path}: {len(names)} names in 'classes' but {size} target values per sample")
        names = names or [f"target{i}" for i in range(size)]
    elif names is None:
        top = max((int(s.labels.max()) for s in stores.values() if len(s)), default=-1)
        names = [str(i) for i in range(top + 1)]
    return RawData(names, stores["train"], stores.get("test"), f"npz:{path}", task)


def open_h5_source(path, in_memory: bool, task: str | None = None, copies_per_node: int = 1) -> RawData:
    meta = H5Meta(path, task)
    stores = {}
    nbytes = sum(int(np.prod((len(labels), *shape))) for _, shape, labels in meta.splits.values())
    held = in_memory and fits_in_memory(nbytes, copies_per_node, _available_memory())
    for split, (_, shape, labels) in meta.splits.items():
        store = H5Store(meta.path, split, labels, shape)
        if held:
            store = ArrayStore(store.read_all(), labels, store.description)
        stores[split] = store
    return RawData(meta.classes, stores["train"], stores.get("test"), f"h5:{meta.path}", meta.task)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


def fits_in_memory(nbytes: int, copies: int, available: int) -> bool:
    """Whether `copies` processes of one node may each hold `nbytes` in memory: together at most a
    quarter of the `available` memory (the rest is for the networks, their activations and the
    system). Every rank of a node decides at the same moment, each seeing the same free memory."""
    return nbytes * max(copies, 1) <= available // 4


_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_label_names", "fine_labels"),
}


def open_cifar(root, kind: str, download: bool = False) -> RawData:
    """The python-pickle CIFAR layout torchvision uses: ROOT/cifar-10-batches-py/data_batch_1..5,
    test_batch, batches.meta (CIFAR-100: ROOT/cifar-100-python/train, test, meta; fine labels)."""
    folder, train_files, test_file, meta_file, names_key, labels_key = _CIFAR[kind]
    root = Path(root)
    if download:
        _download(kind, root)
    base = root / folder if (root / folder).is_dir() else root
    if not (base / meta_file).is_file():
        raise BadInput(f"{kind}: no {folder}/{meta_file} under {root}; point at the folder that holds "
                       f"{folder} (torchvision's root){_download_hint(kind, root)}")
    names = [str(c) for c in _unpickle(base / meta_file, kind)[names_key]]

    def load(files):
        xs, ys = [], []
        for name in files:
            d = _unpickle(_require_file(base / name, f"{kind} file"), kind)
            try:
                data = np.asarray(d["data"], dtype=np.uint8)
                xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                ys.append(check_labels(np.asarray(d[labels_key]), len(names), str(base / name)))
            except (KeyError, ValueError) as exc:
                raise BadInput(f"{base / name} is not a {kind} batch ({type(exc).__name__}: {exc})") from None
            if len(xs[-1]) != len(ys[-1]):
                raise BadInput(f"{base / name}: {len(xs[-1])} images but {len(ys[-1])} labels")
        return ArrayStore(np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), f"{kind}:{root}")

    return RawData(names, load(train_files), load([test_file]), f"{kind}:{root}")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR's python batches hold (dicts, lists, strings, numbers and numpy arrays)
    and nothing else: pickle.load calls any function a file names, so a crafted data file would
    run code. Only the functions that rebuild a numpy array are found (numpy 1's and 2's module
    names; protocol 2's byte strings go through _codecs.encode, protocol 5's arrays through
    _frombuffer)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of the CIFAR format (refused: a pickle "
                                         "that names it could run code)")
        return super().find_class(module, name)


def _unpickle(path: Path, kind: str) -> dict:
    try:
        with open(path, "rb") as f:
            content = _CifarUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise BadInput(f"cannot read {path} as a {kind} pickle ({type(exc).__name__}: {exc}); "
                       "the file is truncated or corrupt, or not a CIFAR batch") from None
    if not isinstance(content, dict):
        raise BadInput(f"{path} is not a {kind} batch: it holds a {type(content).__name__}, not a dict")
    return content


def _download_hint(kind: str, root: Path) -> str:
    """How to fetch a public data set: `run` reads data, the import command downloads it."""
    return (f", or download it where there is internet: `python -m ddc_hpc.data import {kind} {root} data/{kind}.h5 "
            f"--download` fetches it into {root} (so this source then works) and writes an HDF5 copy for "
            f"data.source = 'h5:data/{kind}.h5' (docs/DATA.md)")


def _download(kind: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "food101": tvd.Food101}[kind]
    root.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "food101":
            cls(str(root), split="train", download=True)
        else:
            cls(str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 — network errors come in many types
        raise BadInput(f"cannot download {kind} into {root}: {exc}") from None


def open_food101(root, size: int, download: bool = False, workers: int = 1) -> RawData:
    """ROOT/food-101/images/<class>/<id>.jpg with meta/classes.txt and meta/train.txt, test.txt
    (lines "class/id"; torchvision's train.json/test.json are read when the .txt are missing)."""
    root = Path(root)
    if download:
        _download("food101", root)
    base = root / "food-101" if (root / "food-101").is_dir() else root
    images, meta = base / "images", base / "meta"
    if not images.is_dir() or not meta.is_dir():
        raise BadInput(f"food101: no food-101/images and food-101/meta under {root}; point at the folder "
                       f"that holds food-101 (torchvision's root){_download_hint('food101', root)}")
    if (meta / "classes.txt").is_file():
        names = [line.strip() for line in (meta / "classes.txt").read_text().splitlines() if line.strip()]
    else:
        names = sorted(p.name for p in images.iterdir() if p.is_dir())
    index = {name: i for i, name in enumerate(names)}
    stores = {}
    for split in ("train", "test"):
        if (meta / f"{split}.txt").is_file():
            entries = [line.strip() for line in (meta / f"{split}.txt").read_text().splitlines() if line.strip()]
        elif (meta / f"{split}.json").is_file():
            entries = [e for ids in json.loads((meta / f"{split}.json").read_text()).values() for e in ids]
        else:
            raise BadInput(f"food101: {meta} has neither {split}.txt nor {split}.json")
        paths, labels = [], []
        for entry in entries:
            cls = entry.split("/")[0]
            if cls not in index:
                raise BadInput(f"food101: {meta}/{split}.txt names class {cls!r}, not in classes.txt")
            paths.append(str(images / f"{entry}.jpg"))
            labels.append(index[cls])
        missing = [p for p in paths[:1] + paths[-1:] if not os.path.isfile(p)]
        if missing:
            raise BadInput(f"food101: image {missing[0]} listed in meta/{split}.txt does not exist")
        stores[split] = FileStore(paths, np.array(labels, dtype=np.int64), size, f"food101:{root}", workers)
    return RawData(names, stores["train"], stores["test"], f"food101:{root}")


def _class_files(folder: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith("."))
    return files


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def open_imagefolder(root, size: int | None, workers: int = 1) -> RawData:
    """A class-per-folder tree (ROOT/<class>/**/<image>), classes in sorted order as torchvision's
    ImageFolder; ROOT/train and ROOT/test (or ROOT/val) holding such trees give a test split."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"imagefolder: {root} is not a folder" + ("" if root.is_absolute() else
                       f" (relative paths start at {Path.cwd()})") + "; point the source at a class-per-folder "
                       "tree ROOT/<class>/<image files> (optionally ROOT/train and ROOT/test), see docs/DATA.md")
    top = _class_dirs(root)
    held_out = next((d for d in ("test", "val") if d in top), None)
    if "train" in top and held_out and _class_dirs(root / "train") and _class_dirs(root / held_out):
        train_root, test_root = root / "train", root / held_out
    else:
        train_root, test_root = root, None
    names = _class_dirs(train_root)
    if not names:
        raise BadInput(f"imagefolder: {train_root} has no class folders (expected ROOT/<class>/<image files>)")
    stores = {}
    for split, folder in (("train", train_root), ("test", test_root)):
        if folder is None:
            continue
        extra = sorted(set(_class_dirs(folder)) - set(names))
        if extra:
            raise BadInput(f"imagefolder: {folder} has classes {extra} that {train_root} lacks")
        paths, labels = [], []
        for i, name in enumerate(names):
            if (folder / name).is_dir():
                files = _class_files(folder / name)
                paths += files
                labels += [i] * len(files)
        if not paths:
            raise BadInput(f"imagefolder: no image files ({', '.join(IMG_EXTENSIONS)}) under {folder}")
        stores[split] = FileStore(paths, np.array(labels, dtype=np.int64), size, f"imagefolder:{root}", workers)
    if size is None:
        first = stores["train"].image_shape
        for store in stores.values():
            store.image_shape = first
    return RawData(names, stores["train"], stores.get("test"), f"imagefolder:{root}")
