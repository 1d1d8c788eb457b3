"""Bad-input corpus: each case exits 2 with a message saying what is wrong, no traceback,
before any training, leaving nothing that looks like a finished result.

Most cases call the CLI's main() in this process (fast); a few go through mpiexec at 4 ranks to
show the message is printed once and every rank exits 2.
"""

from __future__ import annotations


import h5py
import numpy as np
import pytest

from conftest import launch, sets
from ddc_hpc.run import main

GOOD_TOML = "[sub]\nepochs = 1\n"


def _npz(path, x=None, y=None, **extra):
    x = np.zeros((40, 32, 32, 3), np.uint8) if x is None else x
    y = np.arange(40) % 10 if y is None else y
    np.savez(path, x=x, y=y, **extra)
    return path


def _write(path, text):
    path.write_text(text)
    return path


# (id, arguments as a function of tmp_path, expected words in the message)
CASES = [
    ("malformed-toml", lambda d: ["--config", str(_write(d / "j.toml", "[model\nname = 1"))], "not valid TOML"),
    ("missing-config", lambda d: ["--config", str(d / "none.toml")], "does not exist"),
    ("unknown-section", lambda d: sets("modle.name=cnn11"), "did you mean 'model'"),
    ("unknown-key", lambda d: sets("sub.epoch=3"), "did you mean 'sub.epochs'"),
    ("lr-not-a-number", lambda d: sets("sub.lr=fast"), "sub.lr must be a number"),
    ("negative-epochs", lambda d: sets("global.epochs=-1"), "global.epochs must be >= 0"),
    ("zero-batch", lambda d: sets("sub.batch_size=0"), "sub.batch_size must be >= 1"),
    ("bool-for-int", lambda d: sets("sub.epochs=true"), "sub.epochs must be a whole number"),
    ("bad-set-syntax", lambda d: ["--set", "sub.epochs"], "key=value"),
    ("partitions-not-dividing", lambda d: sets("decompose.partitions=3", "decompose.grid=[3, 1]"),
     "does not split"),
    ("grid-does-not-match", lambda d: sets("decompose.grid=[2, 3]"), "one tile per sub-network"),
    ("overlap-too-large", lambda d: sets("decompose.overlap=17"), "overlap 17"),
    ("crop-too-large", lambda d: sets("decompose.crop=16"), "crop 16"),
    ("more-subnets-than-tiles", lambda d: sets(
        f"data.source=npz:{_npz(d / 'x.npz', x=np.zeros((40, 8, 8, 3), np.uint8))}", "decompose.partitions=128",
        "model.width=128"), "does not split into 16 equal tiles"),
    ("levels-not-starting-at-partitions", lambda d: sets("decompose.levels=[16, 4]"), "set decompose.partitions = 16"),
    ("levels-not-dividing", lambda d: sets("decompose.partitions=16", "decompose.levels=[16, 3]"), "divide it"),
    ("levels-grid-not-refining", lambda d: sets("model.width=16", "decompose.partitions=16", "decompose.grid=[1, 16]",
                                                "decompose.levels=[16, 4]"), "does not refine"),
    ("levels-width-not-dividing", lambda d: sets("model.width=8", "decompose.partitions=16",
                                                 "decompose.levels=[16, 4]"), "do not split into 16"),
    ("levels-tiles-below-the-minimum", lambda d: sets(
        f"data.source=npz:{_npz(d / 'x.npz', x=np.zeros((40, 64, 64, 3), np.uint8))}", "model.name=vgg11",
        "model.width=16", "decompose.partitions=16", "decompose.levels=[16, 4]"), "cannot be built"),
    ("level-epochs-one-per-level", lambda d: sets("model.width=16", "decompose.partitions=16",
                                                  "decompose.levels=[16, 4]", "decompose.level_epochs=[2]"),
     "give one per level"),
    ("level-epochs-need-levels", lambda d: sets("decompose.level_epochs=[2]"), "the run has one level"),
    ("unknown-model", lambda d: sets("model.name=resnet21"), "resnet"),
    ("unknown-strategy", lambda d: sets("run.strategy=dcc"), "did you mean 'ddc'"),
    ("unknown-backend", lambda d: sets("run.backend=ncll"), "did you mean 'nccl'"),
    ("nccl-without-gpus", lambda d: sets("run.backend=nccl", "run.strategy=random"), "needs GPUs"),
    ("mpi-backend-missing", lambda d: sets("run.backend=mpi"), "no MPI backend"),
    ("cuda-without-gpus", lambda d: sets("run.device=cuda"), "no CUDA device"),
    ("unknown-precision", lambda d: sets("run.precision=bf61"), "did you mean 'bf16'"),
    ("fp16-on-cpu", lambda d: sets("run.device=cpu", "run.precision=fp16"), "'fp16' needs GPUs"),
    ("val-fraction-out-of-range", lambda d: sets("data.val_fraction=1.0"), "data.val_fraction"),
    ("decreasing-milestones", lambda d: sets("global.milestones=[5, 2]"), "increasing"),
    ("unknown-data-kind", lambda d: sets("data.source=imagenet:/x"), "imagenet"),
    ("missing-data-file", lambda d: sets(f"data.source=npz:{d / 'none.npz'}"), "none.npz"),
    ("garbage-h5", lambda d: sets(f"data.source=h5:{_write(d / 'bad.h5', 'not hdf5')}"), "bad.h5"),
    ("truncated-npz", lambda d: sets(f"data.source=npz:{_truncated(d)}"), "trunc.npz"),
    ("wrong-dimensions", lambda d: sets(f"data.source=npz:{_npz(d / 'x.npz', x=np.zeros((40, 32, 32), np.uint8))}"),
     "2 spatial axes"),
    ("labels-out-of-range", lambda d: sets(f"data.source=npz:{_npz(d / 'x.npz', y=np.arange(40) % 10 + 1)}"),
     "label"),
    ("labels-not-integer", lambda d: sets(f"data.source=npz:{_npz(d / 'x.npz', y=np.linspace(0, 9, 40))}"),
     "integer"),
    ("empty-dataset", lambda d: sets(f"data.source=npz:{_npz(d / 'x.npz', x=np.zeros((0, 32, 32, 3), np.uint8), y=np.zeros(0, np.int64))}"),
     "empty"),
    ("class-count-mismatch", lambda d: sets(f"data.source=npz:{_npz(d / 'x.npz')}", "model.num_classes=5"), "5"),
    ("images-smaller-than-tiles", lambda d: sets(
        f"data.source=npz:{_npz(d / 'x.npz', x=np.zeros((40, 8, 8, 3), np.uint8))}", "decompose.overlap=6"),
     "overlap"),
    ("out-dir-not-writable", lambda d: ["--out", str(_write(d / "file", "x") / "run")], "not writable"),
    ("resume-with-nothing", lambda d: ["--resume"], "no checkpoint"),
]


def _truncated(d):
    path = _npz(d / "trunc.npz")
    path.write_bytes(path.read_bytes()[:300])
    return path


@pytest.mark.parametrize("make_args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_clear_message(make_args, expected, tmp_path, capsys):
    args = make_args(tmp_path)
    if "--out" not in args:
        args = ["--out", str(tmp_path / "run"), *args]
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert expected in err and err.startswith("error: "), err
    assert "Traceback" not in err
    out = tmp_path / "run"  # refused before any training: no checkpoint, model or result (not timed)
    assert not (out / "results.json").exists() and not list(out.glob("*.pt")) if out.is_dir() else True
    assert not (out / "checkpoints").exists()


def test_changed_config_on_resume_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "global").mkdir(parents=True)
    (out / "checkpoints" / "global" / "manifest.json").write_text(
        '{"checkpoints": [{"number": 0, "file": "x", "sha256": "", "epoch": 1, "step": 0, '
        '"finished": false, "config": "another-config"}]}')
    with pytest.raises(SystemExit) as exited:
        main(["--out", str(out), "--resume"])
    assert exited.value.code == 2 and "different configuration" in capsys.readouterr().err


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "run"), "--debug", *sets("sub.lr=fast")])
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("override, expected", [("model.name=resnet21", "resnet"),
                                                ("data.source=npz:/nonexistent.npz", "nonexistent.npz")])
def test_bad_input_at_four_ranks_is_reported_once_and_every_rank_exits_2(override, expected, tmp_path):
    done = launch(4, "ddc_hpc.run", "--out", str(tmp_path / "run"), *sets(override), timeout=240)
    assert done.returncode == 2
    assert done.stderr.count("error: ") == 1 and expected in done.stderr and "Traceback" not in done.stderr


def test_ranks_that_do_not_split_evenly_over_the_subnetworks_are_refused(tmp_path):
    done = launch(3, "ddc_hpc.run", "--out", str(tmp_path / "run"), *sets("decompose.partitions=2"), timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("error: ") == 1 and "3 ranks do not split evenly over 2 sub-networks" in done.stderr
    assert "at most 2 ranks or a multiple of 2" in done.stderr
