"""The data side of the paper's extensions (section 2.4): 1D signals and 3D volumes, regression
targets, and the loader's ``task`` (classification, regression, autoencoder).

``pytest`` runs quick checks (features + logistic regression, no network training). Run this file
as a script for the learnability numbers in docs/DATA.md (small networks, a few epochs):

    python tests/test_data_nd.py [--epochs 8] [--only 1d|3d|regression]
"""

from __future__ import annotations

import argparse
import time

import h5py
import numpy as np
import pytest
import torch

from ddc_hpc.data import (SampleSet, batches, channel_std, check_tiles, content_checksum, describe,
                          import_dataset, load_dataset, make_batch, synthetic, synthetic1d, synthetic3d)
from ddc_hpc.data.synthetic import (frequencies_1d, symbol_count_1d, symbol_count_3d, tile_bayes_accuracy)
from ddc_hpc.errors import BadInput
from ddc_hpc.partition import tile_slices_nd

# --------------------------------------------------------------------------------- helpers


def logistic_accuracy(train_x, train_y, val_x, val_y, classes: int = 10, steps: int = 100) -> float:
    """Validation accuracy of an L2-regularised multinomial logistic regression (LBFGS) on features."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    xt = torch.tensor((train_x - mu) / sd, dtype=torch.float32)
    xv = torch.tensor((val_x - mu) / sd, dtype=torch.float32)
    yt = torch.as_tensor(train_y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        linear = torch.nn.Linear(xt.shape[1], classes)
        opt = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(linear(xt), yt) + 1e-3 * linear.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return float((linear(xv).argmax(1).numpy() == np.asarray(val_y)).mean())
    finally:
        torch.set_num_threads(threads)


def block_spectra(samples: np.ndarray, block: int, pad: int = 1) -> np.ndarray:
    """Shift-invariant features: the sum over the block x ... x block cubes of ``samples`` (n, *spatial,
    C=1) of log |FFT| of each cube (its mean removed) — a whole-input statistic when the cubes cover
    the sample, a one-tile statistic for a tile."""
    x = samples.astype(np.float64)[..., 0]
    axes = tuple(range(1, x.ndim))
    total = 0
    for corner in np.ndindex(*[s // block for s in x.shape[1:]]):
        cube = x[(slice(None), *(slice(c * block, (c + 1) * block) for c in corner))]
        cube = cube - cube.mean(axis=axes, keepdims=True)
        spectrum = np.abs(np.fft.rfftn(cube, s=[block * pad] * len(axes), axes=axes))
        total = total + np.log1p(spectrum.reshape(len(x), -1))
    return total


def region(samples: np.ndarray, tile) -> np.ndarray:
    return samples[(slice(None), *tile)]


# ------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("make, shape", [
    (lambda n, seed, **kw: synthetic1d(n, seed, **kw), (64, 1)),
    (lambda n, seed, **kw: synthetic3d(n, seed, **kw), (16, 16, 16, 1)),
])
def test_generators_are_deterministic_balanced_uint8(make, shape):
    x, y = make(60, 5)
    x2, y2 = make(60, 5)
    assert x.shape == (60, *shape) and x.dtype == np.uint8 and y.dtype == np.int64 and y.shape == (60,)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(x, make(60, 6)[0])
    assert np.bincount(y).tolist() == [6] * 10
    assert 60 < x.mean() < 195 and x.std() > 20  # uses the 8-bit range, neither flat nor saturated
    assert make(12, 0, num_classes=3)[1].max() == 2


def test_generator_options_shapes_and_classes():
    x, _ = synthetic1d(8, 0, length=100, channels=3)
    assert x.shape == (8, 100, 3)
    assert not np.array_equal(x[..., 0], x[..., 1])  # every channel its own phase, level, amplitude
    assert synthetic3d(4, 0, size=8, channels=2)[0].shape == (4, 8, 8, 8, 2)
    assert synthetic1d(0, 0)[0].shape == (0, 64, 1)
    # the tones (1D) and patterns (3D) that define the classes do not depend on the seed or, up to
    # 10 classes, on the class count
    assert np.array_equal(frequencies_1d(3), frequencies_1d(10)) and len(frequencies_1d(10)) == 12
    assert len(frequencies_1d(30)) == symbol_count_1d(30) == 32
    assert symbol_count_3d(10) == 18 and symbol_count_3d(8) == 9
    for bad in (dict(length=7), dict(channels=0), dict(evidence=1.5)):
        with pytest.raises(ValueError):
            synthetic1d(4, 0, **bad)
    with pytest.raises(ValueError):
        synthetic3d(4, 0, target="ranking")


def test_one_segment_is_less_informative_than_the_whole_signal():
    x, y = synthetic1d(1200, 0)
    train, val = slice(0, 800), slice(800, None)
    whole = block_spectra(x, 16, pad=2)
    tile = tile_slices_nd((64,), (4,))[1]
    part = block_spectra(region(x, tile), 16, pad=2)
    full_acc = logistic_accuracy(whole[train], y[train], whole[val], y[val])
    tile_acc = logistic_accuracy(part[train], y[train], part[val], y[val])
    bayes = tile_bayes_accuracy(10, 0.65, symbols=symbol_count_1d(10))  # 0.656
    assert full_acc >= 0.75 and tile_acc <= bayes + 0.05 and full_acc - tile_acc >= 0.12, (full_acc, tile_acc)
    assert tile_acc >= 0.4, tile_acc  # but a segment is informative: chance is 0.1


def test_one_octant_is_less_informative_than_the_whole_volume_and_flips_keep_the_class():
    v, y = synthetic3d(900, 0)
    train, val = slice(0, 600), slice(600, None)
    whole = block_spectra(v, 8)
    tile = tile_slices_nd((16, 16, 16), (2, 2, 2))[5]
    part = block_spectra(region(v, tile), 8)
    full_acc = logistic_accuracy(whole[train], y[train], whole[val], y[val])
    tile_acc = logistic_accuracy(part[train], y[train], part[val], y[val])
    assert full_acc >= 0.85 and full_acc - tile_acc >= 0.3 and tile_acc >= 0.2, (full_acc, tile_acc)
    # make_batch's flip reverses the last axis: the set of patterns maps onto itself, so a classifier
    # of unflipped volumes reads flipped ones as well (reversing another axis would not be so)
    flipped = block_spectra(v[val][:, :, :, ::-1], 8)
    assert logistic_accuracy(whole[train], y[train], flipped, y[val]) >= full_acc - 0.05


# -------------------------------------------------------------------------- regression targets


def _r2(features: np.ndarray, target: np.ndarray) -> float:
    """In-sample R^2 of a least-squares fit (with intercept)."""
    a = np.column_stack([features, np.ones(len(features))])
    residual = target - a @ np.linalg.lstsq(a, target, rcond=None)[0]
    return 1 - residual.var() / target.var()


def _segment_stats(samples: np.ndarray, tiles) -> tuple[np.ndarray, np.ndarray]:
    """Per tile: mean value and standard deviation, averaged over the channels -> (n, tiles) each."""
    channels = samples.shape[-1]
    parts = [region(samples, t).reshape(len(samples), -1, channels).astype(np.float64) for t in tiles]
    return np.stack([p.mean(1).mean(1) for p in parts], 1), np.stack([p.std(1).mean(1) for p in parts], 1)


@pytest.mark.parametrize("kind", ["synthetic", "synthetic1d", "synthetic3d"])
def test_regression_targets_are_a_smooth_function_of_the_whole_input(kind):
    make = {"synthetic": synthetic, "synthetic1d": synthetic1d, "synthetic3d": synthetic3d}[kind]
    n = {"synthetic": 600, "synthetic1d": 1500, "synthetic3d": 500}[kind]
    x, t = make(n, 0, num_classes=2, target="regression")
    x10, labels = make(n, 0)
    assert np.array_equal(x, x10)  # same samples as the classification set of 10 classes
    assert t.dtype == np.float32 and t.shape == (n, 2) and np.isfinite(t).all()
    assert np.abs(t.mean(0)).max() < 0.15 and np.abs(t.std(0) - 1).max() < 0.15  # standardised
    assert np.array_equal(make(n, 0, num_classes=1, target="regression")[1], t[:, :1])
    assert np.array_equal(make(n, 0, num_classes=2, target="regression")[1], t)  # deterministic
    spatial = x.shape[1:-1]
    tiles = tile_slices_nd(spatial, (2,) * len(spatial) if len(spatial) > 1 else (4,))
    means, stds = _segment_stats(x, tiles)
    # brightness: the whole input's mean value nearly determines it; one tile's only partly
    whole_b, tile_b = _r2(means.mean(1, keepdims=True), t[:, 1]), _r2(means[:, :1], t[:, 1])
    # strength: the mean spread within the segments (pattern amplitude; noise adds a constant)
    whole_s, tile_s = _r2(stds.mean(1, keepdims=True), t[:, 0]), _r2(stds[:, :1], t[:, 0])
    parts = len(tiles)
    assert whole_b > 0.9 and tile_b < 1.6 / parts, (whole_b, tile_b)
    assert whole_s > 0.5 and tile_s < whole_s / 2, (whole_s, tile_s)  # 2D: 0.63 (clipped pixels)
    with pytest.raises(ValueError, match="1 or 2 targets"):
        make(4, 0, num_classes=3, target="regression")


# -------------------------------------------------------------------------------------- loader


@pytest.mark.parametrize("source, shape", [
    ("synthetic1d:n=300,seed=2", (64, 1)),
    ("synthetic1d:n=200,length=48,channels=2", (48, 2)),
    ("synthetic3d:n=100,size=8", (8, 8, 8, 1)),
    ("synthetic3d", (16, 16, 16, 1)),
])
def test_sources_load_as_the_generators_give(source, shape):
    s = load_dataset(source, num_classes=10, val_fraction=0.2, seed=0)
    assert s.train.image_shape == shape and s.mean.shape == (shape[-1],) and s.task == "classification"
    n = len(s.train) + len(s.val)
    assert np.bincount(s.val.labels).tolist() == [len(s.val) // 10] * 10  # stratified
    samples, labels = s.train.read(np.arange(5))
    assert samples.dtype == torch.uint8 and labels.dtype == torch.int64 and tuple(samples.shape) == (5, *shape)
    kind, _, options = source.partition(":")
    kwargs = {k: int(v) for k, v in (o.split("=") for o in options.split(",") if o)}
    x, y = {"synthetic1d": synthetic1d, "synthetic3d": synthetic3d}[kind](**{"n": n, "seed": 0, **kwargs})
    order = np.concatenate([s.train._index, s.val._index])
    assert np.array_equal(np.sort(order), np.arange(n))
    assert np.array_equal(s.train.read(np.arange(len(s.train)))[0].numpy(), x[s.train._index])


def test_regression_loading_reads_float_targets_with_a_random_split():
    s = load_dataset("synthetic1d:n=400,target=regression", num_classes=2, val_fraction=0.25, seed=3, limit=100,
                     val_limit=50, task="regression")
    assert s.task == "regression" and s.classes == ["strength", "brightness"]
    assert len(s.train) == 100 and len(s.val) == 50 and s.train.target_shape == (2,)
    samples, targets = s.train.read([4, 0, 4])
    assert samples.dtype == torch.uint8 and targets.dtype == torch.float32 and tuple(targets.shape) == (3, 2)
    assert torch.equal(targets[0], targets[2])
    _, all_targets = synthetic1d(400, 0, num_classes=2, target="regression")
    assert np.array_equal(s.train.labels, all_targets[s.train._index])
    def load(seed, **kw):
        return load_dataset("synthetic1d:n=400,target=regression", num_classes=2, val_fraction=0.25, seed=seed,
                            task="regression", **kw)

    again, other = load(3), load(4)
    assert len(again.val) == 100 and not np.array_equal(again.val._index, other.val._index)
    assert np.array_equal(again.val._index, load(3).val._index)  # seeded
    one = load_dataset("synthetic:n=50,target=regression", num_classes=1, val_fraction=0.2, seed=0, task="regression")
    assert one.train.target_shape == (1,) and one.classes == ["strength"]
    assert load_dataset("synthetic3d:n=30,size=8,target=regression,classes=2", num_classes=None,
                        val_fraction=0.2, seed=0, task="regression").train.target_shape == (2,)


def test_autoencoder_ignores_targets_and_class_count():
    s = load_dataset("synthetic1d:n=60", num_classes=64, val_fraction=0.2, seed=0, task="autoencoder")
    assert s.task == "autoencoder" and s.train.labels.dtype == np.int64  # the class labels, as stored
    assert load_dataset("synthetic1d:n=60,target=regression", num_classes=7, val_fraction=0.2, seed=0,
                        task="autoencoder").train.labels.dtype == np.float32


def test_task_checks_raise_badinput(tmp_path):
    x, _ = synthetic1d(40, 0)
    y = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    nan = y.copy()
    nan[7, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=nan)
    np.savez(tmp_path / "str.npz", x=x, y=np.array(["a"] * 40))
    cases = [
        (f"npz:{tmp_path / 'ok.npz'}", 3, "regression", r"2 regression target value\(s\) per sample .* num_classes=3 "
                                                         r"outputs: the target size must equal num_classes"),
        (f"npz:{tmp_path / 'nan.npz'}", 2, "regression", "must be finite numbers, but 1 sample.*first: sample 7"),
        (f"npz:{tmp_path / 'str.npz'}", 2, "regression", "must be real numbers"),
        (f"npz:{tmp_path / 'ok.npz'}", 2, "classification", "class indices.*if these are regression targets"),
        ("synthetic1d:target=regression", 2, "classification", "holds regression targets .* model.task = 'regression'"),
        ("synthetic1d", 2, "regression", "holds class labels.*add target=regression"),
        ("synthetic3d:target=regression", 3, "regression", "1 or 2 outputs"),
        ("synthetic1d:target=ranking", 2, "regression", "target must be classification or regression"),
        ("synthetic1d:size=3", 10, "classification", "unknown option 'size'"),
        ("synthetic1d:length=4", 10, "classification", "length >= 8"),
        ("synthetic3d:channels=0", 10, "classification", "channels >= 1"),
        ("synthetic1d", 10, "segmentation", "task must be one of classification, regression, autoencoder"),
    ]
    for source, classes, task, message in cases:
        with pytest.raises(BadInput, match=message):
            load_dataset(source, num_classes=classes, val_fraction=0.1, seed=0, task=task)
    cifar_like = tmp_path / "c.h5"
    import_dataset("synthetic", "n=20", cifar_like, progress=False)
    with pytest.raises(BadInput, match="holds class labels"):
        load_dataset(f"h5:{cifar_like}", num_classes=1, val_fraction=0.1, seed=0, task="regression")


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_targets_round_trip_npz_h5_loader_bit_exactly(tmp_path, in_memory, dtype):
    x, _ = synthetic3d(30, 1, size=8)
    rng = np.random.default_rng(1)
    y = (rng.normal(size=(30, 3)) * 1e3).astype(dtype)
    y[0] = [np.float32(1 / 3), -0.0, 1e-30]
    np.savez(tmp_path / "r.npz", x_train=x[:24], y_train=y[:24], x_test=x[24:], y_test=y[24:],
             classes=np.array(["a", "b", "c"]))
    out = import_dataset("npz", str(tmp_path / "r.npz"), tmp_path / "r.h5", progress=False)
    with h5py.File(out) as f:
        assert f["labels"].dtype == np.float32 and f["labels"].shape == (24, 3)
        assert f["labels"].attrs["task"] == "regression" and f.attrs["task"] == "regression"
        assert f["test/labels"].shape == (6, 3) and f.attrs["num_classes"] == 3
        assert content_checksum(out) == f.attrs["checksum"]
    expected = y.astype(np.float32)
    for source in (f"h5:{out}", f"npz:{tmp_path / 'r.npz'}"):
        s = load_dataset(source, num_classes=3, val_fraction=0.1, seed=0, in_memory=in_memory, task="regression")
        assert s.classes == ["a", "b", "c"]
        samples, targets = s.train.read(np.arange(24))
        assert targets.dtype == torch.float32
        assert targets.numpy().tobytes() == expected[:24].tobytes()  # bit for bit, -0.0 included
        assert samples.numpy().tobytes() == x[:24].tobytes()
        assert s.val.read(np.arange(6))[1].numpy().tobytes() == expected[24:].tobytes()
    info = describe(out)
    assert info["task"] == "regression" and info["target_shape"] == [3]
    assert np.allclose(info["splits"]["train"]["targets"]["mean"], expected[:24].astype(np.float64).mean(0))


def test_import_task_guess_and_cli(tmp_path, capsys):
    from ddc_hpc.data.__main__ import main

    x, _ = synthetic1d(20, 0)
    whole = np.arange(20, dtype=np.float64) % 4  # float but whole numbers: class indices, as before
    np.savez(tmp_path / "w.npz", x=x, y=whole)
    np.savez(tmp_path / "r.npz", x=x, y=whole + 0.25)
    assert main(["import", "npz", str(tmp_path / "w.npz"), str(tmp_path / "w.h5")]) == 0
    assert main(["import", "npz", str(tmp_path / "w.npz"), str(tmp_path / "wr.h5"), "--task", "regression"]) == 0
    assert main(["import", "npz", str(tmp_path / "r.npz"), str(tmp_path / "r.h5")]) == 0
    capsys.readouterr()
    with h5py.File(tmp_path / "w.h5") as f:
        assert f["labels"].dtype == np.int64 and f.attrs["task"] == "classification"
    with h5py.File(tmp_path / "wr.h5") as f:
        assert f["labels"].dtype == np.float32 and f["labels"].shape == (20, 1)
    assert main(["info", str(tmp_path / "r.h5"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "targets   1 (regression, float32, shape (1,) per sample)" in out and "(verified)" in out
    assert "target0" in out and "train mean" in out and "1.75" in out  # mean of (0..3) + 0.25
    assert main(["import", "npz", str(tmp_path / "r.npz"), str(tmp_path / "x.h5"), "--task", "classification"]) == 2
    assert "integer class indices" in capsys.readouterr().err
    assert main(["import", "synthetic1d", "n=30,target=regression", str(tmp_path / "s.h5")]) == 0
    assert "strength" in capsys.readouterr().out
    s = load_dataset(str(tmp_path / "s.h5"), num_classes=2, val_fraction=0.2, seed=0, task="regression")
    assert np.array_equal(s.train.labels, synthetic1d(30, 0, num_classes=2, target="regression")[1][s.train._index])
    assert main(["import", "synthetic3d", "synthetic3d:n=10,size=8", str(tmp_path / "v.h5")]) == 0
    assert "(10, 8, 8, 8, 1)" in capsys.readouterr().out


def test_foreign_h5_float_labels_follow_the_task(tmp_path):
    x, _ = synthetic1d(10, 0)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["images"], f["labels"] = x, np.linspace(0, 1, 10)
    s = load_dataset(f"h5:{tmp_path / 'f.h5'}", num_classes=1, val_fraction=0.2, seed=0, task="regression")
    assert s.train.target_shape == (1,) and s.classes == ["target0"]
    with pytest.raises(BadInput, match="integer"):
        load_dataset(f"h5:{tmp_path / 'f.h5'}", num_classes=1, val_fraction=0.2, seed=0)
    assert load_dataset(f"h5:{tmp_path / 'f.h5'}", num_classes=5, val_fraction=0.2, seed=0,
                        task="autoencoder").train.labels.dtype == np.float32


# --------------------------------------------------------------------------- views: 1D and 3D


@pytest.mark.parametrize("shape, grid, overlap", [((64, 1), (4,), 0), ((64, 2), (4,), 4),
                                                  ((16, 16, 16, 1), (2, 2, 2), 0), ((12, 16, 16, 2), (2, 2, 2), 2)])
def test_make_batch_tiles_signals_and_volumes_like_tile_slices_nd(shape, grid, overlap):
    x = np.random.default_rng(0).integers(0, 256, (5, *shape), dtype=np.uint8)
    mean = torch.linspace(0.3, 0.6, shape[-1])
    std = torch.linspace(0.1, 0.2, shape[-1])
    tiles = tile_slices_nd(shape[:-1], grid, overlap)
    check_tiles(shape, tiles)
    for tile in tiles:
        assert len(tile) == len(shape) - 1
        batch = make_batch(torch.from_numpy(x), mean=mean, tile=tile, augment=False, generator=None)
        expected = torch.from_numpy(np.moveaxis(region(x, tile), -1, 1).copy()).float() / 255
        view = (1, -1, *[1] * (len(shape) - 1))
        assert batch.shape == expected.shape and batch.is_contiguous()
        assert torch.allclose(batch, expected - mean.view(view), atol=1e-6)
        scaled = make_batch(torch.from_numpy(x), mean=mean, tile=tile, augment=False, generator=None, std=std)
        assert torch.allclose(scaled, (expected - mean.view(view)) / std.view(view), atol=1e-5)
    g = torch.Generator().manual_seed(0)
    augmented = make_batch(torch.from_numpy(x), mean=mean, tile=tiles[-1], augment=True, generator=g, max_shift=1)
    assert augmented.shape == batch.shape
    with pytest.raises(BadInput, match="does not fit"):
        check_tiles((shape[0] - 1, *shape[1:]), tiles)
    with pytest.raises(BadInput, match="spatial axes"):
        check_tiles(shape, [tiles[0][:-1]] if len(tiles[0]) > 1 else [(slice(0, 2), slice(0, 2))])


def test_channel_std_and_batches_with_std():
    s = load_dataset("synthetic1d:n=200,channels=2", num_classes=10, val_fraction=0.1, seed=0)
    std = channel_std(s.train)
    pixels = s.train.read(np.arange(len(s.train)))[0].numpy().reshape(-1, 2) / 255.0
    assert torch.allclose(std, torch.tensor(pixels.std(0), dtype=torch.float32), atol=1e-6)
    x = torch.cat([b for b, _ in batches(s.train, np.arange(len(s.train)), 64, mean=s.mean, std=std)])
    assert torch.allclose(x.mean(dim=(0, 2)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2)), torch.ones(2), atol=1e-3)
    flat = SampleSet(_Store(np.full((3, 4, 1), 7, np.uint8)))
    assert channel_std(flat).tolist() == [1.0]  # a constant channel is left unscaled


class _Store:
    def __init__(self, images):
        self.images, self.labels, self.image_shape = images, np.zeros(len(images), np.int64), images.shape[1:]

    def __len__(self):
        return len(self.images)

    def read(self, index):
        return self.images[index]


# ------------------------------------------------------------------------------------ numbers


def _train(net, splits, tile, epochs, *, task="classification", std=None, lr=3e-3, batch_size=32, seed=0):
    """Adam, no augmentation; per epoch the validation accuracy (classification) or R^2 per target."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr)
    g = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.functional.cross_entropy if task == "classification" else torch.nn.functional.mse_loss
    scores = []
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(splits.train), generator=g).numpy()
        for x, y in batches(splits.train, order, batch_size, mean=splits.mean, tile=tile, std=std):
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        outputs, targets = [], []
        with torch.no_grad():
            for x, y in batches(splits.val, np.arange(len(splits.val)), 256, mean=splits.mean, tile=tile, std=std):
                outputs.append(net(x))
                targets.append(y)
        out, y = torch.cat(outputs), torch.cat(targets)
        if task == "classification":
            scores.append(float((out.argmax(1) == y).float().mean()))
        else:
            scores.append(tuple(float(1 - (out[:, j] - y[:, j]).var() / y[:, j].var()) for j in range(y.shape[1])))
    return scores


def main() -> None:
    import ddc_hpc

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--only", choices=("1d", "3d", "regression"), default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    def show(name, scores, seconds):
        text = " ".join(f"{s:.2f}" if isinstance(s, float) else "/".join(f"{v:.2f}" for v in s) for s in scores)
        print(f"  {name:44s} {text}  ({seconds:.0f} s)", flush=True)

    if args.only in (None, "1d"):
        s = load_dataset("synthetic1d", num_classes=10, val_fraction=0.2, seed=0)
        std = channel_std(s.train)
        print(f"synthetic1d: {len(s.train)} train / {len(s.val)} val, (64, 1); Adam 3e-3, batch 32, no augmentation; "
              f"val accuracy per epoch (std {float(std[0]):.3f})")
        tile = tile_slices_nd((64,), (4,))[1]
        for model, options, scaled in (("cnn1d", dict(width=16), False), ("mlp", dict(width=256), False),
                                       ("rnn", dict(width=64, readout="mean"), False),
                                       ("rnn", dict(width=64, readout="mean"), True),
                                       ("gru", dict(width=32, readout="mean"), True)):
            for name, t in (("full 64", None), ("segment 16:32", tile)):
                opts = dict(options)
                if model == "mlp":
                    opts["in_features"] = 64 if t is None else 16
                torch.manual_seed(0)
                net = ddc_hpc.build_model(model, 10, **opts)
                start = time.perf_counter()
                scores = _train(net, s, t, args.epochs, std=std if scaled else None)
                label = f"{model} {options.get('width')}{' mean' if 'readout' in options else ''}" \
                        f"{' std' if scaled else ''} {name}"
                show(label, scores, time.perf_counter() - start)
    if args.only in (None, "3d"):
        s = load_dataset("synthetic3d", num_classes=10, val_fraction=0.2, seed=0)
        print(f"synthetic3d: {len(s.train)} train / {len(s.val)} val, (16, 16, 16, 1); Adam 3e-3, batch 32")
        for name, t in (("cnn3d 8 full 16^3", None), ("cnn3d 8 octant 8^3", tile_slices_nd((16,) * 3, (2, 2, 2))[0])):
            torch.manual_seed(0)
            net = ddc_hpc.build_model("cnn3d", 10, width=8)
            start = time.perf_counter()
            show(name, _train(net, s, t, args.epochs), time.perf_counter() - start)
    if args.only in (None, "regression"):
        s = load_dataset("synthetic1d:target=regression", num_classes=2, val_fraction=0.2, seed=0, task="regression")
        print("synthetic1d:target=regression: val R^2 (strength/brightness) per epoch")
        tile = tile_slices_nd((64,), (4,))[1]
        for name, t in (("cnn1d 16 full 64", None), ("cnn1d 16 segment 16:32", tile)):
            torch.manual_seed(0)
            net = ddc_hpc.build_model("cnn1d", 2, width=16)
            start = time.perf_counter()
            show(name, _train(net, s, t, args.epochs, task="regression"), time.perf_counter() - start)


if __name__ == "__main__":
    main()
