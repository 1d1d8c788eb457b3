"""Importers and direct loading of cifar10, cifar100, food101 and imagefolder sources, on small
fixtures in the real on-disk layouts (made here; no dataset is downloaded)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from ddc_hpc.data import import_dataset, load_dataset
from ddc_hpc.data.sources import decode_image
from ddc_hpc.errors import BadInput


def _pixels(seed, n, h=32, w=32):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _cifar_tree(root: Path, hundred: bool):
    """torchvision's python-pickle layout, written the way the originals are (N x 3072, CHW rows)."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    classes = [f"fine{i}" for i in range(100)] if hundred else [f"c10_{i}" for i in range(10)]
    key = "fine_labels" if hundred else "labels"
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    xs, ys = [], []
    for i, name in enumerate([*names, "test"]):
        x = _pixels(i, 6)
        y = np.random.default_rng(100 + i).integers(0, len(classes), 6)
        batch = {"data": x.transpose(0, 3, 1, 2).reshape(6, -1), key: y.tolist(), "batch_label": name}
        if hundred:
            batch["coarse_labels"] = (y // 5).tolist()
        out = folder / (name if hundred or name != "test" else "test_batch")
        with open(out, "wb") as f:
            pickle.dump(batch, f)
        xs.append(x)
        ys.append(y)
    meta = {"fine_label_names": classes, "coarse_label_names": [f"coarse{i}" for i in range(20)]} if hundred \
        else {"label_names": classes, "num_cases_per_batch": 6}
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump(meta, f)
    return classes, np.concatenate(xs[:-1]), np.concatenate(ys[:-1]), xs[-1], ys[-1]


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_import_and_direct_loading(tmp_path, kind):
    classes, x, y, xt, yt = _cifar_tree(tmp_path / "root", kind == "cifar100")
    out = import_dataset(kind, str(tmp_path / "root"), tmp_path / f"{kind}.h5", progress=False)
    with h5py.File(out) as f:
        assert np.array_equal(f["images"][()], x) and np.array_equal(f["labels"][()], y)
        assert np.array_equal(f["test/images"][()], xt) and np.array_equal(f["test/labels"][()], yt)
        assert list(f.attrs["classes"]) == classes
    for source in (f"{kind}:{tmp_path / 'root'}", f"h5:{out}"):
        s = load_dataset(source, num_classes=len(classes), val_fraction=0.1, seed=0)
        assert s.classes == classes and len(s.train) == len(x) and len(s.val) == len(xt)
        images, labels = s.train.read(np.arange(len(x)))
        assert np.array_equal(images.numpy(), x) and np.array_equal(labels.numpy(), y)
    with pytest.raises(BadInput, match="10 classes" if kind == "cifar10" else "100 classes"):
        load_dataset(f"{kind}:{tmp_path / 'root'}", num_classes=7, val_fraction=0.1, seed=0)


def test_cifar_truncated_batch(tmp_path):
    _cifar_tree(tmp_path, hundred=False)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(BadInput, match="truncated or corrupt"):
        load_dataset(f"cifar10:{tmp_path}", num_classes=10, val_fraction=0.1, seed=0)


def _imagefolder(root: Path, sizes, fmt="PNG"):
    """root/<class>/<i>.png with random pixels; returns {path: pixels}."""
    written = {}
    for c, cls in enumerate(["cat", "dog", "emu"]):
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            pixels = _pixels(10 * c + i, 1, h, w)[0]
            path = root / cls / f"{i}.{fmt.lower()}"
            Image.fromarray(pixels).save(path, fmt)
            written[str(path)] = pixels
    (root / "cat" / "notes.txt").write_text("not an image")
    return written


def test_imagefolder_import_keeps_exact_pixels(tmp_path):
    written = _imagefolder(tmp_path / "tree", [(20, 16)] * 3)
    out = import_dataset("imagefolder", str(tmp_path / "tree"), tmp_path / "f.h5", progress=False)
    with h5py.File(out) as f:
        assert list(f.attrs["classes"]) == ["cat", "dog", "emu"]
        assert f["images"].shape == (9, 16, 20, 3) and f["labels"][()].tolist() == [0] * 3 + [1] * 3 + [2] * 3
        assert np.array_equal(f["images"][()], np.stack(list(written.values())))
    s = load_dataset(f"imagefolder:{tmp_path / 'tree'}", num_classes=3, val_fraction=0.34, seed=0)
    assert len(s.val) == 3 and np.bincount(s.val.labels).tolist() == [1, 1, 1]
    assert s.train.image_shape == (16, 20, 3)


def test_imagefolder_resize_center_crop_and_mixed_sizes(tmp_path):
    _imagefolder(tmp_path / "tree", [(40, 30), (30, 50), (64, 64)])
    with pytest.raises(BadInput, match="--size"):
        import_dataset("imagefolder", str(tmp_path / "tree"), tmp_path / "f.h5", progress=False)
    with pytest.raises(BadInput, match="size=N"):
        load_dataset(f"imagefolder:{tmp_path / 'tree'}", num_classes=3, val_fraction=0.2, seed=0)
    assert not (tmp_path / "f.h5").exists()
    out = import_dataset("imagefolder", str(tmp_path / "tree"), tmp_path / "f.h5", size=24, progress=False)
    with h5py.File(out) as f:
        assert f["images"].shape == (9, 24, 24, 3)
    s = load_dataset(f"imagefolder:{tmp_path / 'tree'}?size=24", num_classes=3, val_fraction=0.2, seed=0)
    assert s.train.image_shape == (24, 24, 3)
    # torchvision semantics: shorter side -> 24, then the central 24x24
    from torchvision.transforms import functional as F

    path = tmp_path / "tree" / "dog" / "1.png"
    with Image.open(path) as im:
        ref = np.asarray(F.center_crop(F.resize(im.convert("RGB"), 24), 24))
    assert np.abs(decode_image(str(path), 24).astype(int) - ref.astype(int)).max() <= 1


def test_imagefolder_train_test_tree_and_bad_files(tmp_path):
    _imagefolder(tmp_path / "tree" / "train", [(16, 16)] * 2)
    _imagefolder(tmp_path / "tree" / "val", [(16, 16)])
    s = load_dataset(f"imagefolder:{tmp_path / 'tree'}", num_classes=3, val_fraction=0.5, seed=0)
    assert len(s.train) == 6 and len(s.val) == 3  # the tree's own val/ split, not val_fraction
    out = import_dataset("imagefolder", str(tmp_path / "tree"), tmp_path / "f.h5", progress=False)
    with h5py.File(out) as f:
        assert f["test/images"].shape == (3, 16, 16, 3)
    (tmp_path / "tree" / "train" / "emu" / "9.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BadInput, match="cannot read image"):
        import_dataset("imagefolder", str(tmp_path / "tree"), tmp_path / "g.h5", progress=False)
    assert not (tmp_path / "g.h5").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no class folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}", num_classes=None, val_fraction=0.1, seed=0)


def test_food101_layout(tmp_path):
    base = tmp_path / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "baklava"]
    (base / "meta").mkdir(parents=True)
    train, test = [], []
    for c, cls in enumerate(classes):
        (base / "images" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_pixels(c * 7 + i, 1, 40 + 8 * i, 48)[0]).save(base / "images" / cls / f"{100 + i}.jpg")
            (train if i < 2 else test).append(f"{cls}/{100 + i}")
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    (base / "meta" / "train.txt").write_text("\n".join(train) + "\n")
    (base / "meta" / "test.txt").write_text("\n".join(test) + "\n")
    out = import_dataset("food101", str(tmp_path), tmp_path / "food.h5", size=32, progress=False)
    with h5py.File(out) as f:
        assert f["images"].shape == (6, 32, 32, 3) and f["test/images"].shape == (3, 32, 32, 3)
        assert f["labels"][()].tolist() == [0, 0, 1, 1, 2, 2] and f["test/labels"][()].tolist() == [0, 1, 2]
        stored = f["images"][()]
    s = load_dataset(f"food101:{tmp_path}?size=32", num_classes=3, val_fraction=0.1, seed=0)
    assert s.classes == classes and len(s.val) == 3
    assert np.array_equal(s.train.read(np.arange(6))[0].numpy(), stored)
    # torchvision's json meta instead of the .txt lists
    (base / "meta" / "train.txt").unlink()
    (base / "meta" / "train.json").write_text(json.dumps({c: [t for t in train if t.startswith(c)] for c in classes}))
    assert load_dataset(f"food101:{base}?size=32", num_classes=3, val_fraction=0.1, seed=0).train.labels.tolist() \
        == [0, 0, 1, 1, 2, 2]
    assert load_dataset(f"food101:{tmp_path}", num_classes=3, val_fraction=0.1, seed=0).train.image_shape \
        == (224, 224, 3)
    with pytest.raises(BadInput, match="food-101/images"):
        load_dataset(f"food101:{tmp_path / 'nowhere'}", num_classes=3, val_fraction=0.1, seed=0)


def test_synthetic_import(tmp_path):
    out = import_dataset("synthetic", "n=50,seed=2", tmp_path / "s.h5", progress=False)
    a = load_dataset(f"h5:{out}", num_classes=10, val_fraction=0.2, seed=0)
    b = load_dataset("synthetic:n=50,seed=2", num_classes=10, val_fraction=0.2, seed=0)
    assert np.array_equal(a.train.read(np.arange(40))[0], b.train.read(np.arange(40))[0])
    assert np.array_equal(a.val.labels, b.val.labels)
