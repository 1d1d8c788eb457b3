"""Atomic publishing of files: a reader sees the old file or the complete new one, never a part.

Checkpoints, results, reports and imported datasets are all written this way (no MPI, no torch:
every tool may import it).
"""

from __future__ import annotations

import os
from pathlib import Path


def staging_path(path: Path) -> Path:
    """Where `path` is written before it is published: beside it, so the rename stays on one filesystem."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, path: Path) -> Path:
    """fsync `staged`, rename it over `path`, fsync the folder so the rename survives a crash."""
    _fsync(staged)
    os.replace(staged, path)
    _fsync(Path(path).parent)
    return Path(path)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a staging file: readers see the old or the new content."""
    path = Path(path)
    staged = staging_path(path)
    try:
        staged.write_bytes(data)
        publish(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
