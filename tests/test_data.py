"""Data layer: HDF5 round trip, loader, tiled views, augmentation, bad data, atomic writes."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import cli
from ddc_hpc.data import (H5Writer, SampleSet, batches, check_tiles, content_checksum, import_dataset,
                          load_dataset, make_batch, stratified_split, synthetic)
from ddc_hpc.data.synthetic import symbol_count, tile_bayes_accuracy
from ddc_hpc.errors import BadInput
from ddc_hpc.partition import tile_slices, tile_slices_nd

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def arrays():
    x, y = synthetic(240, seed=3)
    return x, y


@pytest.fixture
def npz_split(tmp_path, arrays):
    x, y = arrays
    path = tmp_path / "split.npz"
    np.savez(path, x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:],
             classes=np.array([f"c{i}" for i in range(10)]))
    return path


# ------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("in_memory", [True, False])
def test_npz_to_h5_to_loader_is_bit_exact(tmp_path, arrays, npz_split, in_memory):
    x, y = arrays
    out = import_dataset("npz", str(npz_split), tmp_path / "d.h5", progress=False)
    with h5py.File(out) as f:
        assert f["images"].dtype == np.uint8 and f["images"].chunks == (1, 32, 32, 3)
        assert f["labels"].dtype == np.int64 and "test" in f
        assert list(f.attrs["classes"]) == [f"c{i}" for i in range(10)]
        assert f.attrs["checksum"].startswith("sha256:") and "npz" in f.attrs["source"]
    assert content_checksum(out) == h5py.File(out).attrs["checksum"]
    splits = load_dataset(f"h5:{out}", num_classes=10, val_fraction=0.3, seed=0, in_memory=in_memory)
    assert splits.train.in_memory is in_memory
    assert len(splits.train) == 200 and len(splits.val) == 40  # the file's test group is the validation set
    assert splits.classes == [f"c{i}" for i in range(10)]
    order = np.random.default_rng(0).permutation(200)[:77]
    order = np.concatenate([order, order[:5]])  # repeats and any order
    images, labels = splits.train.read(order)
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert np.array_equal(images.numpy(), x[:200][order]) and np.array_equal(labels.numpy(), y[:200][order])
    images, labels = splits.val.read(np.arange(40))
    assert np.array_equal(images.numpy(), x[200:]) and np.array_equal(labels.numpy(), y[200:])
    assert np.array_equal(splits.train.labels, y[:200])
    expected_mean = x[:200].reshape(-1, 3).mean(0) / 255
    assert torch.allclose(splits.mean, torch.tensor(expected_mean, dtype=torch.float32), atol=1e-6)


def test_npz_source_direct_and_stratified_validation(tmp_path, arrays):
    x, y = arrays
    np.savez(tmp_path / "a.npz", x=x, y=y)
    a = load_dataset(f"npz:{tmp_path / 'a.npz'}", num_classes=10, val_fraction=0.25, seed=7)
    b = load_dataset(f"npz:{tmp_path / 'a.npz'}", num_classes=None, val_fraction=0.25, seed=7)
    c = load_dataset(str(tmp_path / "a.npz"), num_classes=10, val_fraction=0.25, seed=8)
    assert len(a.val) == 60 and len(a.train) == 180
    assert np.array_equal(a.val.labels, b.val.labels)  # seeded
    assert np.bincount(a.val.labels).tolist() == [6] * 10  # stratified: 24 per class -> 6 each
    assert not np.array_equal(a.val.read(np.arange(60))[0], c.val.read(np.arange(60))[0])
    # train and validation are disjoint and together the whole set
    seen = np.concatenate([a.train.read(np.arange(180))[0], a.val.read(np.arange(60))[0]])
    assert sorted(map(bytes, seen)) == sorted(map(bytes, x))


def test_stratified_split_and_limit():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, val = stratified_split(labels, 0.1, seed=1)
    assert len(val) == 10 and np.bincount(labels[val]).tolist() == [1, 2, 3, 4]
    assert not set(train) & set(val) and len(train) + len(val) == 100
    assert np.array_equal(val, stratified_split(labels, 0.1, seed=1)[1])
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=2)[1])
    s = load_dataset("synthetic:n=400", num_classes=10, val_fraction=0.1, seed=0, limit=100, val_limit=20)
    assert len(s.train) == 100 and np.bincount(s.train.labels).tolist() == [10] * 10
    assert len(s.val) == 20
    full = load_dataset("synthetic:n=400", num_classes=10, val_fraction=0.1, seed=0)
    assert len(full.train) == 360 and len(full.val) == 40


def test_imageset_pickles_and_reads_after_fork(tmp_path, arrays):
    x, y = arrays
    np.savez(tmp_path / "a.npz", x=x, y=y)
    out = import_dataset("npz", str(tmp_path / "a.npz"), tmp_path / "a.h5", progress=False)
    assert content_checksum(out) == h5py.File(out).attrs["checksum"]  # a file without a test group
    splits = load_dataset(f"h5:{out}", num_classes=10, val_fraction=0.1, seed=0, in_memory=False)
    first = splits.train.read([0, 1])[0]  # opens the handle in this process
    clone = pickle.loads(pickle.dumps(splits.train))
    assert torch.equal(clone.read([0, 1])[0], first)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply(_read_in_child, (splits.train, [3, 2, 1]))
    assert np.array_equal(child, splits.train.read([3, 2, 1])[0].numpy())


def _read_in_child(images, indices):
    return images.read(indices)[0].numpy()


def test_synthetic_is_deterministic_balanced_and_spread():
    x, y = synthetic(200, seed=5)
    x2, y2 = synthetic(200, seed=5)
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, synthetic(200, seed=6)[0])
    assert np.bincount(y).tolist() == [20] * 10
    assert symbol_count(10) == 12  # a symbol per class and spare distractors, whole bands of 4
    assert 0.6 <= tile_bayes_accuracy(10) <= 0.7  # one quadrant alone is only partly informative
    assert tile_bayes_accuracy(10, evidence=1.0) == 1.0
    assert tile_bayes_accuracy(10, evidence=0.0) < 0.12  # about chance (0.1): a symbol seen rules its class out
    assert synthetic(20, 0, num_classes=3, size=20)[0].shape == (20, 20, 20, 3)


# ----------------------------------------------------------------------------- views, augmentation


def test_tile_views_match_tile_slices(arrays):
    x, _ = arrays
    images = torch.from_numpy(x[:8])
    mean = torch.tensor([0.5, 0.4, 0.3])
    for overlap in (0, 4):
        tiles = tile_slices(32, 32, (2, 2), overlap)
        check_tiles((32, 32, 3), tiles)
        for tile in tiles:
            batch = make_batch(images, mean=mean, tile=tile, augment=False, generator=None)
            expected = torch.from_numpy(x[:8][:, tile[0], tile[1]]).permute(0, 3, 1, 2).float() / 255
            expected -= mean.view(1, 3, 1, 1)
            assert batch.shape == (8, 3, 16 + overlap, 16 + overlap)
            assert batch.dtype == torch.float32 and batch.is_contiguous()
            assert torch.allclose(batch, expected, atol=1e-6)


def test_augmentation_reproducible_keeps_shapes_and_labels(arrays):
    x, y = arrays
    images = SampleSet(_ArrayStore(x, y))
    mean = torch.zeros(3)
    tile = tile_slices(32, 32, (2, 2), 4)[3]

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return list(batches(images, np.arange(100)[::-1], 32, mean=mean, tile=tile, augment=True, generator=g))

    a, b, c = run(0), run(0), run(1)
    assert [xb.shape for xb, _ in a] == [(32, 3, 20, 20)] * 3 + [(4, 3, 20, 20)]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(torch.cat([ya for _, ya in a]), torch.from_numpy(y[np.arange(100)[::-1]]))
    assert not torch.equal(a[0][0], c[0][0])
    dropped = list(batches(images, np.arange(100), 32, mean=mean, drop_last=True))
    assert len(dropped) == 3 and all(xb.shape == (32, 3, 32, 32) for xb, _ in dropped)


def test_flips_and_shifts_really_change_pixels(arrays):
    x, _ = arrays
    images = torch.from_numpy(x[:64])
    plain = make_batch(images, mean=torch.zeros(3), tile=None, augment=False, generator=None)
    flipped = make_batch(images, mean=torch.zeros(3), tile=None, augment=True,
                         generator=torch.Generator().manual_seed(0), max_shift=0)
    same = [(torch.equal(f, p), torch.equal(f, p.flip(-1))) for f, p in zip(flipped, plain)]
    assert all(s or fl for s, fl in same)
    assert 10 < sum(fl for _, fl in same) < 54  # about half flipped
    shifted = make_batch(images, mean=torch.zeros(3), tile=None, augment=True,
                         generator=torch.Generator().manual_seed(1), max_shift=4)
    assert shifted.shape == plain.shape
    for s, p in zip(shifted, plain):  # every sample: some flip and shift (dy, dx) explains it exactly
        found = False
        for q in (p, p.flip(-1)):
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    moved = torch.zeros_like(q)
                    moved[:, max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)] = \
                        q[:, max(-dy, 0):32 + min(-dy, 0), max(-dx, 0):32 + min(-dx, 0)]
                    found = found or torch.equal(moved, s)
        assert found
    assert sum(not torch.equal(s, p) and not torch.equal(s, p.flip(-1)) for s, p in zip(shifted, plain)) > 40


def test_normalised_batches_have_zero_mean():
    s = load_dataset("synthetic:n=300", num_classes=10, val_fraction=0.0, seed=0)
    assert len(s.val) == 0
    images, _ = s.train.read(np.arange(len(s.train)))
    batch = make_batch(images, mean=s.mean, tile=None, augment=False, generator=None)
    assert batch.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert 0.3 < float(s.mean.min()) and float(s.mean.max()) < 0.7


def test_dimension_agnostic_signals_and_volumes(tmp_path):
    rng = np.random.default_rng(0)
    for shape, grid in (((64, 2), (4,)), ((8, 12, 16, 1), (2, 2, 2))):
        x = rng.integers(0, 256, (30, *shape), dtype=np.uint8)
        y = np.arange(30) % 3
        np.savez(tmp_path / "nd.npz", x=x, y=y)
        out = import_dataset("npz", str(tmp_path / "nd.npz"), tmp_path / "nd.h5", force=True, progress=False)
        s = load_dataset(f"h5:{out}", num_classes=3, val_fraction=0.2, seed=0, in_memory=False)
        assert s.train.image_shape == shape and s.mean.shape == (shape[-1],)
        images, _ = s.train.read(np.arange(4))
        tiles = tile_slices_nd(shape[:-1], grid)
        check_tiles(s.train.image_shape, tiles)
        batch = make_batch(images, mean=s.mean, tile=tiles[-1], augment=True,
                           generator=torch.Generator().manual_seed(0), max_shift=1)
        assert batch.shape == (4, shape[-1], *(t.stop - t.start for t in tiles[-1])) and batch.is_contiguous()


def test_batches_are_contiguous_nchw_not_channels_last(arrays):
    x, _ = arrays
    batch = make_batch(torch.from_numpy(x[:4]), mean=torch.zeros(3), tile=None, augment=True,
                       generator=torch.Generator().manual_seed(0))
    assert batch.is_contiguous() and batch.stride()[1] == 32 * 32


ONEDNN_SCRIPT = textwrap.dedent("""
    import numpy as np, torch
    from torch import nn
    from ddc_hpc.data import make_batch
    torch.manual_seed(0)
    # a width-4 sub-network with the 1x1 stride-2 4->8 projection that crashes oneDNN on channels_last
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 8, kernel_size=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8))
    for step in range(12):
        x = make_batch(pixels, mean=torch.full((3,), 0.5), tile=(slice(6, 26), slice(0, 20)), augment=True,
                       generator=g)
        assert x.is_contiguous()
        loss = nn.functional.cross_entropy(net(x), torch.arange(32) % 10)
        opt.zero_grad(); loss.backward(); opt.step()
    print("ok", float(loss))
""")


def test_onednn_width4_regression_on_permuted_uint8_batches():
    """torch 2.14.1 (docs/PLATFORM.md): a channels_last input to Conv2d(4, 8, 1, stride=2) corrupts the heap in
    backward on AVX2 CPUs; make_batch must hand out contiguous NCHW. Runs in a subprocess (a crash
    fails the test, not pytest) with oneDNN capped at AVX2: on AVX-512 machines the bug hides
    otherwise (checked: the same script on a raw permuted batch aborts under this cap)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    proc = subprocess.run([sys.executable, "-c", ONEDNN_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


# ------------------------------------------------------------------------------------- bad data


def test_check_tiles():
    check_tiles((32, 32, 3), tile_slices(32, 32, (2, 2), 4))
    with pytest.raises(BadInput, match="does not fit images of 28x28"):
        check_tiles((28, 28, 3), tile_slices(32, 32, (2, 2), 4))
    with pytest.raises(BadInput, match="spatial axes"):
        check_tiles((32, 32, 3), [(slice(0, 16),)])
    with pytest.raises(BadInput, match="differ in shape"):
        check_tiles((32, 32, 3), [(slice(0, 16), slice(0, 16)), (slice(0, 20), slice(0, 16))])
    with pytest.raises(BadInput):
        check_tiles((32, 32, 3), [])


def _bad_npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_bad_data_raises_badinput(tmp_path, arrays):
    x, y = arrays
    cases = {
        "missing file": (f"h5:{tmp_path / 'nope.h5'}", "does not exist"),
        "missing npz": (f"npz:{tmp_path / 'nope.npz'}", "does not exist"),
        "wrong dims": (_bad_npz(tmp_path, "dims.npz", x=x.reshape(240, -1), y=y), r"\(N, \*spatial, C\)"),
        "float pixels": (_bad_npz(tmp_path, "float.npz", x=x / 255.0, y=y), "uint8"),
        "labels out of range": (_bad_npz(tmp_path, "range.npz", x=x, y=y + 5), "labels must lie in"),
        "negative labels": (_bad_npz(tmp_path, "neg.npz", x=x, y=y - 1), "labels must lie in"),
        "float labels": (_bad_npz(tmp_path, "flt.npz", x=x, y=y + 0.5), "integer"),
        "string labels": (_bad_npz(tmp_path, "str.npz", x=x, y=y.astype(str)), "integer"),
        "count mismatch": (_bad_npz(tmp_path, "count.npz", x=x, y=y[:-1]), "240 images but 239 labels"),
        "empty": (_bad_npz(tmp_path, "empty.npz", x=x[:0], y=y[:0]), "empty"),
        "wrong keys": (_bad_npz(tmp_path, "keys.npz", images=x, labels=y), "expected 'x' and 'y'"),
        "class count": (_bad_npz(tmp_path, "cls.npz", x=x, y=y % 7), "has 7 classes but the model"),
        "unknown kind": ("mnist:/data", "unknown data source"),
        "synthetic option": ("synthetic:bogus=1", "unknown option"),
    }
    for name, (source, message) in cases.items():
        with pytest.raises(BadInput, match=message):
            load_dataset(source, num_classes=10, val_fraction=0.1, seed=0)
    for bad in (-0.1, 1.0):
        with pytest.raises(BadInput, match="val_fraction"):
            load_dataset("synthetic:n=50", num_classes=10, val_fraction=bad, seed=0)
    with pytest.raises(BadInput, match="leaves no training samples"):
        load_dataset(_bad_npz(tmp_path, "one.npz", x=x[:1], y=y[:1] * 0), num_classes=1, val_fraction=0.9, seed=0)


def test_truncated_and_garbage_files(tmp_path, arrays):
    x, y = arrays
    np.savez(tmp_path / "a.npz", x=x, y=y)
    out = import_dataset("npz", str(tmp_path / "a.npz"), tmp_path / "a.h5", progress=False)
    data = out.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all" * 100)
    raw = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["pixels"] = x
    with h5py.File(tmp_path / "flt.h5", "w") as f:
        f["images"], f["labels"] = x, y + 0.5
    for source, message in ((f"h5:{tmp_path / 'cut.h5'}", "truncated"), (f"h5:{tmp_path / 'junk.h5'}", "not HDF5"),
                            (f"npz:{tmp_path / 'cut.npz'}", "truncated"), (f"h5:{tmp_path / 'other.h5'}", "no 'images'"),
                            (f"h5:{tmp_path / 'flt.h5'}", "integer"), (f"h5:{tmp_path}", "folder")):
        with pytest.raises(BadInput, match=message):
            load_dataset(source, num_classes=10, val_fraction=0.1, seed=0)


def test_class_count_must_match_h5_class_names(tmp_path, npz_split):
    out = import_dataset("npz", str(npz_split), tmp_path / "d.h5", progress=False)
    with pytest.raises(BadInput, match="has 10 classes but the model is built for num_classes=100"):
        load_dataset(f"h5:{out}", num_classes=100, val_fraction=0.1, seed=0)


def test_cli(tmp_path, npz_split, arrays, capsys):
    from ddc_hpc.data.__main__ import main

    x, y = arrays
    assert main(["import", "npz", str(npz_split), str(tmp_path / "ok.h5")]) == 0
    assert main(["info", str(tmp_path / "ok.h5"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "(verified)" in out and "c9" in out and "train     200 images, shape (200, 32, 32, 3)" in out
    assert "test      40 images" in out
    assert main(["info", str(npz_split)]) == 0  # an npz, which run.py reads too, says what it is
    out = capsys.readouterr().out
    assert "format    npz (numpy archive" in out and "train     200 images, shape (200, 32, 32, 3)" in out
    assert "test      40 images" in out and "c9" in out
    np.savez(tmp_path / "bad.npz", x=x, y=y - 1)  # a label -1
    for args, message in ((["import", "npz", str(npz_split), str(tmp_path / "ok.h5")], "already exists"),
                          (["import", "cifar10", str(tmp_path), str(tmp_path / "c.h5")], "cifar-10-batches-py"),
                          (["import", "npz", str(tmp_path / "x.npz"), str(tmp_path / "no" / "x.h5")], "does not exist"),
                          (["info", str(npz_split), "--verify"], "records no content checksum")):
        assert main(args) == 2, args
        assert message in capsys.readouterr().err
    # as a user runs it (test_serial_tools launches it): exit status 2, one message, no traceback
    for args, message in ((("info", tmp_path / "missing.h5"), "does not exist"),
                          (("import", "npz", tmp_path / "bad.npz", tmp_path / "bad.h5"), "labels must lie in")):
        proc = cli(main, *map(str, args))
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad.h5").exists() and not list(tmp_path.glob("*.tmp*"))


# --------------------------------------------------------------------------------- atomic writes


def test_interrupted_write_leaves_no_final_file(tmp_path, arrays):
    x, y = arrays
    out = tmp_path / "d.h5"
    with pytest.raises(KeyboardInterrupt):
        with H5Writer(out, image_shape=(32, 32, 3), classes=list("abcdefghij"), source="test") as w:
            w.append("train", x[:100], y[:100])
            raise KeyboardInterrupt
    assert not out.exists() and not list(tmp_path.iterdir())
    # a process killed mid-write leaves at most its temporary file, never the final name
    script = textwrap.dedent(f"""
        import os, numpy as np
        from ddc_hpc.data import H5Writer, synthetic
        x, y = synthetic(50, 0)
        w = H5Writer({str(out)!r}, image_shape=(32, 32, 3), classes=list("abcdefghij"), source="test")
        w.append("train", x, y)
        os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 9, proc.stderr
    assert not out.exists()
    assert all(".h5.tmp" in p.name for p in tmp_path.iterdir())
    # a failing import (bad labels in a later block) leaves nothing either, and keeps an older file
    out.write_bytes(b"old")
    with pytest.raises(BadInput):
        with H5Writer(out, image_shape=(32, 32, 3), classes=list("abcdefghij"), source="test") as w:
            w.append("train", x[:100], y[:100])
            w.append("train", x[100:], y[100:] + 10)
    assert out.read_bytes() == b"old"


class _ArrayStore:
    def __init__(self, images, labels):
        self.images, self.labels, self.image_shape = images, labels, images.shape[1:]
        self.description = "test"

    def __len__(self):
        return len(self.labels)

    def read(self, index):
        return self.images[index]


@pytest.mark.parametrize("source, fix", [
    ("h5:{d}/nope.h5", "python -m ddc_hpc.data import KIND SOURCE OUT.h5"),
    ("npz:{d}/nope.npz", "Check data.source"),
    ("cifar10:{d}/cifar", "`python -m ddc_hpc.data import cifar10 {d}/cifar data/cifar10.h5 --download`"),
    ("food101:{d}/food", "`python -m ddc_hpc.data import food101 {d}/food data/food101.h5 --download`"),
    ("imagefolder:{d}/tree", "class-per-folder tree"),
])
def test_missing_data_says_how_to_get_it(tmp_path, source, fix):
    with pytest.raises(BadInput) as err:
        load_dataset(source.format(d=tmp_path), num_classes=10, val_fraction=0.2, seed=0)
    assert fix.format(d=tmp_path) in str(err.value)


def test_data_parallel_peers_draw_their_own_augmentation(monkeypatch):
    """Every sample is the same image, so what a peer's model sees differs only by augmentation."""
    from torch import nn

    from ddc_hpc import comm
    from ddc_hpc.config import PhaseConfig
    from ddc_hpc.train import Job, PhaseData, fit

    image = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    images = SampleSet(_ArrayStore(np.repeat(image, 32, axis=0), np.zeros(32, np.int64)))

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 16 * 16, 2)
            self.seen = []

        def forward(self, x):
            if self.training:
                self.seen.append(x.clone())
            return self.fc(x.flatten(1))

    seen = []
    for peer in (0, 1):  # the two peers of a group, one after the other; no collective is needed
        monkeypatch.setattr(comm, "group_size", lambda group=None: 2)
        monkeypatch.setattr(comm, "group_rank", lambda group=None, peer=peer: peer)
        monkeypatch.setattr(comm, "all_reduce_sum", lambda tensor, group=None: tensor)
        monkeypatch.setattr(comm, "any_stop_requested", lambda group=None: False)
        model = Recorder()
        job = Job(name="sub_0", model=model, config=PhaseConfig(epochs=1, batch_size=8), slot=None, seed=5,
                  data=PhaseData(train=images, val=images, mean=torch.zeros(3), augment=True, max_shift=2),
                  log=lambda message: None)
        fit(job, torch.device("cpu"))
        seen.append(model.seen)
    assert len(seen[0]) == len(seen[1]) == 2
    assert all(not torch.equal(a, b) for a, b in zip(seen[0], seen[1]))
