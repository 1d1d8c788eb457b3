"""cifar10:/cifar100: sources unpickle only what the CIFAR format holds: a crafted file cannot run code."""

from __future__ import annotations

import pickle

import pytest

from ddc_hpc.data import load_dataset
from ddc_hpc.errors import BadInput
from test_data_importers import _cifar_tree


class _RunsCode:
    """Unpickling this calls exec: what any pickle may ask of pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("where", ["batches.meta", "data_batch_2"])
def test_a_crafted_cifar_pickle_is_refused_without_running_code(tmp_path, where):
    _cifar_tree(tmp_path, hundred=False)
    marker = tmp_path / "code-ran"
    path = tmp_path / "cifar-10-batches-py" / where
    with open(path, "rb") as f:
        content = pickle.load(f)
    content["labels" if where != "batches.meta" else "label_names"] = _RunsCode(marker)  # hidden inside the dict
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(BadInput, match=r"builtins\.exec is not part of the CIFAR format"):
        load_dataset(f"cifar10:{tmp_path}", num_classes=10, val_fraction=0.1, seed=0)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_real_format_still_loads_at_every_pickle_protocol(tmp_path, protocol):
    classes, x, y, _, _ = _cifar_tree(tmp_path, hundred=True)
    folder = tmp_path / "cifar-100-python"
    for name in ("train", "test", "meta"):
        with open(folder / name, "rb") as f:
            content = pickle.load(f)
        (folder / name).write_bytes(pickle.dumps(content, protocol=protocol))
    splits = load_dataset(f"cifar100:{tmp_path}", num_classes=100, val_fraction=0.1, seed=0)
    assert splits.classes == classes and len(splits.train) == len(x)


def test_a_pickle_that_is_not_a_dict_is_refused(tmp_path):
    _cifar_tree(tmp_path, hundred=False)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(["not", "a", "dict"]))
    with pytest.raises(BadInput, match="holds a list, not a dict"):
        load_dataset(f"cifar10:{tmp_path}", num_classes=10, val_fraction=0.1, seed=0)
