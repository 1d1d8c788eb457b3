"""Issue 21 item 7: every rank of a node loads its own copy of the data, all at the same moment: the
decision to hold an HDF5 dataset in memory counts them all (comm's local size), so that 8 ranks of
a node never ask for twice the memory there is."""

from __future__ import annotations

import numpy as np

from ddc_hpc.data import load_dataset, sources
from ddc_hpc.data.importers import import_dataset

GiB = 1 << 30


def test_the_copies_of_a_node_fit_together():
    assert sources.fits_in_memory(2 * GiB, copies=1, available=64 * GiB)
    assert sources.fits_in_memory(2 * GiB, copies=8, available=64 * GiB)  # 16 GiB: a quarter
    assert sources.fits_in_memory(3 * GiB, copies=1, available=64 * GiB)
    assert not sources.fits_in_memory(3 * GiB, copies=8, available=64 * GiB)  # 24 GiB together


def test_an_h5_source_is_held_only_if_every_rank_of_the_node_can_hold_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8), np.arange(50) % 5
    np.savez(tmp_path / "a.npz", x=x, y=y)
    path = import_dataset("npz", str(tmp_path / "a.npz"), tmp_path / "a.h5", progress=False)
    monkeypatch.setattr(sources, "_available_memory", lambda: 4 * 2 * x.nbytes)  # room for 2 copies
    held = [load_dataset(f"h5:{path}", num_classes=5, val_fraction=0.2, seed=0, copies_per_node=n).train.in_memory
            for n in (1, 2, 3)]
    assert held == [True, True, False]
