"""Import any source into the project's HDF5 format (``python -m ddc_hpc.data import ...``)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..kinds import KINDS, SYNTHETIC_KINDS
from .hdf5 import H5Meta, H5Writer, content_checksum
from .sources import open_raw

IMPORT_KINDS = ("npz", "cifar10", "cifar100", "food101", "imagefolder", "h5", "synthetic", "synthetic1d", "synthetic3d")
_BLOCK = 512  # samples per read/append


def import_dataset(kind: str, source: str, out, *, size: int | None = None, download: bool = False,
                   compression: str | None = None, workers: int = 1, classes: list[str] | None = None,
                   force: bool = False, command: str | None = None, progress: bool | None = None,
                   task: str | None = None) -> Path:
    """Copy source ``source`` of ``kind`` into the HDF5 file ``out`` (atomically); returns its path.

    ``progress``: a tqdm bar on stderr (None: only when stderr is a terminal).
    ``task``: "classification" or "regression" to say what an npz's ``y`` (or a foreign HDF5 file's
    labels) hold; None guesses: float values that are not all whole numbers, or several values per
    sample, are regression targets (stored float32 with ``task="regression"``).
    """
    if task not in (None, "classification", "regression"):
        raise BadInput(f"--task must be classification or regression (or left out to guess), got {task!r}")
    if kind not in IMPORT_KINDS:
        raise BadInput(f"cannot import kind {kind!r}: use one of {', '.join(IMPORT_KINDS)}")
    out = Path(out)
    if out.exists() and not force:
        raise BadInput(f"{out} already exists: remove it or pass --force to replace it")
    if kind != "synthetic" and Path(source).exists():
        source = str(Path(source).resolve())  # recorded in the file's `source` attribute
    if kind in SYNTHETIC_KINDS:
        spec = source if source == kind or source.startswith(kind + ":") else f"{kind}:{source}"
    else:
        spec = f"{kind}:{source}"
    raw = open_raw(spec, in_memory=False, size=size, download=download, workers=workers, task=task)
    if task is not None and raw.task != task:
        raise BadInput(f"{raw.description} holds {'regression targets' if raw.task == 'regression' else 'class labels'}, "
                       f"not what --task {task} says")
    names = raw.classes
    if classes is not None:
        if raw.task == "regression" and len(classes) != len(names):
            raise BadInput(f"--classes gives {len(classes)} names but there are {len(names)} target values per sample")
        if len(classes) < len(names):
            raise BadInput(f"--classes gives {len(classes)} names but the labels need at least {len(names)}")
        names = list(classes)
    stores = [("train", raw.train)] + ([("test", raw.test)] if raw.test is not None and len(raw.test) else [])
    if len(raw.train) == 0:
        raise BadInput(f"{raw.description}: the dataset is empty (no training samples)")
    total = sum(len(s) for _, s in stores)
    from tqdm import tqdm

    command = command if command is not None else shlex.join([Path(sys.executable).name, "-m", "ddc_hpc.data",
                                                               *sys.argv[1:]])
    with H5Writer(out, image_shape=raw.train.image_shape, classes=names, source=raw.description,
                  command=command, compression=compression, task=raw.task) as writer, \
            tqdm(total=total, unit="img", disable=(None if progress is None else not progress),
                 desc=f"import {kind}", file=sys.stderr) as bar:
        for split, store in stores:
            for start in range(0, len(store), _BLOCK):
                stop = min(len(store), start + _BLOCK)
                writer.append(split, store.read(np.arange(start, stop)), store.labels[start:stop])
                bar.update(stop - start)
    return out


def describe(path, verify: bool = False) -> dict:
    """What ``info`` prints, as a dict (``--json``): of an HDF5 file, or of an npz archive (which
    run.py also reads, as ``data.source = "npz:FILE"``; it records no provenance or checksum)."""
    if Path(path).suffix.lower() == ".npz":
        return _describe_npz(Path(path), verify)
    meta = H5Meta(path)
    info = {
        "file": str(meta.path),
        "bytes": meta.path.stat().st_size,
        "format": f"{meta.attrs.get('format', 'unknown (foreign file)')} v{meta.attrs.get('format_version', '?')}",
        "source": meta.attrs.get("source", ""),
        "command": meta.attrs.get("command", ""),
        "created": meta.attrs.get("created", ""),
        "checksum": meta.attrs.get("checksum", ""),
        "image_shape": list(meta.image_shape),
        "task": meta.task,
        "classes": meta.classes,
        "splits": {},
    }
    _add_splits(info, {split: (shape, labels) for split, (_, shape, labels) in meta.splits.items()})
    if verify:
        t = time.perf_counter()
        actual = content_checksum(path)
        info["checksum_verified"] = actual == info["checksum"]
        info["checksum_actual"] = actual
        info["verify_seconds"] = round(time.perf_counter() - t, 2)
    return info


def _add_splits(info: dict, splits: dict) -> None:
    """info["splits"] (and a regression file's target_shape): count and shape of each split, its
    samples per class or its target statistics; `splits`: name -> (sample shape, labels)."""
    for split, (shape, labels) in splits.items():
        n = len(labels)
        info["splits"][split] = {"count": n, "shape": [n, *shape]}
        if info["task"] == "regression":
            flat = labels.reshape(len(labels), -1).astype(np.float64)
            info["target_shape"] = list(labels.shape[1:])
            info["splits"][split]["targets"] = {
                stat: (getattr(np, stat)(flat, axis=0).tolist() if len(flat) else [None] * flat.shape[1])
                for stat in ("mean", "std", "min", "max")}
        else:
            info["splits"][split]["per_class"] = np.bincount(labels, minlength=len(info["classes"])).tolist()


def _describe_npz(path: Path, verify: bool) -> dict:
    if verify:
        raise BadInput(f"{path} is an npz archive: it records no content checksum to verify (an HDF5 file made "
                       f"with `python -m ddc_hpc.data import npz {path} OUT.h5` does)")
    raw = open_raw(f"npz:{path}", in_memory=False)
    stores = {"train": raw.train} | ({"test": raw.test} if raw.test is not None else {})
    info = {"file": str(path), "bytes": path.stat().st_size,
            "format": "npz (numpy archive; run.py reads it as data.source = \"npz:FILE\")",
            "source": "", "command": "", "created": "", "checksum": "(none recorded: npz)",
            "image_shape": list(raw.train.image_shape), "task": raw.task, "classes": raw.classes, "splits": {}}
    _add_splits(info, {split: (store.image_shape, store.labels) for split, store in stores.items()})
    return info


def format_info(info: dict) -> str:
    mb = info["bytes"] / 1e6
    lines = [
        f"file      {info['file']}  ({mb:.1f} MB)",
        f"format    {info['format']}",
        f"source    {info['source']}",
        f"command   {info['command']}",
        f"created   {info['created']}",
        f"checksum  {info['checksum']}"
        + ("" if "checksum_verified" not in info else
           ("  (verified)" if info["checksum_verified"] else f"  MISMATCH: content is {info['checksum_actual']}")),
    ]
    for split, s in info["splits"].items():
        lines.append(f"{split:<9} {s['count']} images, shape {tuple(s['shape'])}, uint8")
    classes = info["classes"]
    splits = list(info["splits"])
    width = max(len(c) for c in classes)
    if info.get("task") == "regression":
        lines.append(f"targets   {len(classes)} (regression, float32, shape {tuple(info['target_shape'])} per sample)")
        header = "".join(f"{f'{s} {stat}':>14}" for s in splits for stat in ("mean", "std", "min", "max"))
        lines.append("  " + " " * (5 + width) + header)
        for i, name in enumerate(classes):
            cells = "".join(f"{_number(info['splits'][s]['targets'][stat][i]):>14}"
                            for s in splits for stat in ("mean", "std", "min", "max"))
            lines.append(f"  {i:>3}  {name:<{width}}" + cells)
        return "\n".join(lines)
    lines.append(f"classes   {len(classes)}")
    lines.append("  " + " " * (5 + width) + "".join(f"{s:>9}" for s in splits))
    for i, name in enumerate(classes):
        lines.append(f"  {i:>3}  {name:<{width}}" + "".join(f"{info['splits'][s]['per_class'][i]:>9}" for s in splits))
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}"


__all__ = ["import_dataset", "describe", "format_info", "IMPORT_KINDS", "KINDS"]
