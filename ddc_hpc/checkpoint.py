"""Atomic, checksummed checkpoints with a manifest written last; resume from the newest good one.

A checkpoint is complete only once the manifest lists it with its SHA-256, so a job killed while
writing leaves at worst an orphan file that is never read. A file that is truncated or corrupted
later is detected by its checksum and the previous complete checkpoint is used, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import torch

from .files import atomic_write

MANIFEST = "manifest.json"


def save_torch(obj, path: Path) -> str:
    """torch.save atomically; returns the SHA-256 of what was written."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


# What the saved files hold beyond tensors and plain containers: tiles are tuples of slices.
SAFE_GLOBALS = [slice]


def load_torch(path: Path):
    """torch.load with weights_only=True: a tampered file cannot run code (pickle.UnpicklingError)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointSeries:
    """The checkpoints of one trainable thing (a sub-network, the global net, the baseline)."""

    def __init__(self, root: Path, name: str, config_digest: str, keep: int = 2, ranks: int | None = None):
        self.dir = Path(root) / name
        self.name = name
        self.config_digest = config_digest
        self.keep = keep
        self.ranks = ranks  # the job's rank count, recorded with each checkpoint (a resume at another re-shards)

    def _entries(self) -> list[dict]:
        try:
            return json.loads((self.dir / MANIFEST).read_text())["checkpoints"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError) as err:
            warnings.warn(f"checkpoint manifest {self.dir / MANIFEST} is unreadable ({err}); ignoring it")
            return []

    def config_digests(self) -> set[str]:
        return {e["config"] for e in self._entries()}

    def save(self, state: dict, *, epoch: int, step: int, finished: bool, batch: int | None = None) -> Path:
        """Write `state` and list it; `batch` (the samples of a step over all data-parallel peers) is
        recorded with it: a resume at another rank count keeps it (partition.elastic_batch)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        entries = self._entries()
        number = entries[-1]["number"] + 1 if entries else 0
        path = self.dir / f"ckpt-{number:06d}.pt"
        sha = save_torch(state, path)
        entries.append(dict(number=number, file=path.name, sha256=sha, epoch=epoch, step=step,
                            finished=finished, config=self.config_digest,
                            **({} if self.ranks is None else {"ranks": self.ranks}),
                            **({} if batch is None else {"batch": batch})))
        stale, entries = entries[: -self.keep], entries[-self.keep :]
        atomic_write(self.dir / MANIFEST, json.dumps({"checkpoints": entries}, indent=1).encode())
        for entry in stale:
            (self.dir / entry["file"]).unlink(missing_ok=True)
        return path

    def latest_entry(self) -> dict | None:
        """The manifest entry of the newest checkpoint whose bytes match its checksum, or None."""
        for entry in reversed(self._entries()):
            if self.readable(entry):
                return entry
            warnings.warn(f"checkpoint {self.dir / entry['file']} is missing or corrupt (checksum mismatch); "
                          "falling back to the previous complete one")
        return None

    def readable(self, entry: dict) -> bool:
        """Whether this file system holds exactly the checkpoint that `entry` lists."""
        path = self.dir / entry["file"]
        return path.exists() and _sha256(path) == entry["sha256"]

    def load(self, entry: dict) -> dict:
        return load_torch(self.dir / entry["file"])

    def load_latest(self) -> dict | None:
        """The newest checkpoint whose bytes match the manifest's checksum, or None."""
        entry = self.latest_entry()
        return None if entry is None else self.load(entry)


def existing_digests(root: Path) -> set[str]:
    """Config digests of every checkpoint under an out dir's checkpoints/ folder."""
    root = Path(root)
    if not root.is_dir():
        return set()
    return set().union(*(CheckpointSeries(root, d.name, "").config_digests() for d in root.iterdir() if d.is_dir()))
