"""Issue 31: splits that do not move. data.split_seed draws the validation split whatever run.seed;
a stratified tuning split (data.tuning_size) is carved from the training images, disjoint from
training and validation; data.tune scores a trial on it; every run records its splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cli, each_world, results, run_pipeline_here
from ddc_hpc import evaluate
from ddc_hpc.config import load_config, load_run_config
from ddc_hpc.data import load_dataset, load_from_config, split_options
from ddc_hpc.errors import BadInput


def _positions(samples) -> set[int]:
    return set(samples._global(np.arange(len(samples))).tolist())


def test_the_validation_split_does_not_move_with_the_run_seed():
    splits = [load_from_config(load_config(None, [f"run.seed={seed}"])) for seed in (0, 1, 7)]
    assert len({s.val.digest() for s in splits}) == 1 and len({s.train.digest() for s in splits}) == 1
    moved = load_from_config(load_config(None, ["data.split_seed=1"]))
    assert moved.val.digest() != splits[0].val.digest() and len(moved.val) == len(splits[0].val)


def test_the_tuning_split_is_disjoint_stratified_and_fixed():
    config = load_config(None, ["data.tuning_size=300", "run.seed=3"])
    splits = load_from_config(config)
    train, val, tuning = _positions(splits.train), _positions(splits.val), _positions(splits.tuning)
    assert len(tuning) == 300 and not (train & val or train & tuning or val & tuning)
    assert len(train | val | tuning) == 2000  # the synthetic set's every sample, in exactly one split
    counts = np.bincount(splits.tuning.labels, minlength=10)
    overall = np.bincount(np.concatenate([splits.train.labels, splits.tuning.labels]), minlength=10)
    assert np.all(np.abs(counts - overall * 300 / overall.sum()) < 1)  # each class in proportion
    none = load_from_config(load_config(None, []))
    assert none.tuning is None and none.val.digest() == splits.val.digest()  # carving it leaves validation alone
    again = load_from_config(load_config(None, ["data.tuning_size=300", "run.seed=9"]))
    assert again.tuning.digest() == splits.tuning.digest()


def test_a_tuning_trial_scores_the_tuning_split_and_never_the_validation_split():
    plain = load_from_config(load_config(None, ["data.tuning_size=300"]))
    trial = load_from_config(load_config(None, ["data.tuning_size=300", "data.tune=true", "data.val_limit=100"]))
    assert trial.held_out == "tuning" and trial.train.digest() == plain.train.digest()
    assert _positions(trial.val) <= _positions(plain.tuning) and len(trial.val) == 100
    record = trial.record(0)
    assert record["scored_split"] == "tuning" and record["tuning"]["digest"] == plain.tuning.digest()
    with pytest.raises(BadInput, match="data.tuning_size = 0 carves none"):
        load_config(None, ["data.tune=true"])
    with pytest.raises(BadInput, match="leaves no training samples"):
        load_dataset("synthetic", num_classes=10, val_fraction=0.2, seed=0, tuning_size=1600)


def test_runs_from_before_split_seed_keep_the_split_they_were_scored_on(tmp_path):
    assert split_options({"val_fraction": 0.1}, {"seed": 1}) == {"seed": 1, "tuning_size": 0, "tune": False}
    assert split_options({"split_seed": 0, "tuning_size": 5, "tune": True}, {"seed": 1}) == {
        "seed": 0, "tuning_size": 5, "tune": True}
    (tmp_path / "config.toml").write_text("[run]\nseed = 1\n")  # written before data.split_seed existed
    assert load_run_config(tmp_path).data.split_seed == 1
    (tmp_path / "config.toml").write_text("[run]\nseed = 1\n[data]\nsplit_seed = 0\n")
    assert load_run_config(tmp_path).data.split_seed == 0


@each_world(1, 2, 4)
def test_every_rank_count_records_the_splits_the_serial_loader_draws(ranks, tiny_run):
    out, _ = tiny_run  # the stage's shared run at `ranks` ranks
    expected = load_from_config(load_config(None, ["data.limit=192"]))
    assert results(out)["splits"] == expected.record(0) and results(out)["world_size"] == ranks


@pytest.mark.ranks(2)
def test_a_tuning_run_records_its_splits_and_evaluate_scores_the_tuning_split(mpi_tmp_path):
    out = mpi_tmp_path / "trial"
    done = run_pipeline_here(out, "run.strategy=random", "random.epochs=1", "data.tuning_size=200", "data.tune=true",
                             "run.seed=4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "192 train / 200 tuning images of (32, 32, 3) (split seed 0, 200 tuning images not trained on)" in done.stdout
    recorded = results(out)["splits"]
    expected = load_from_config(load_config(None, ["data.tuning_size=200", "data.tune=true", "data.limit=192"]))
    assert recorded == expected.record(0) and recorded["scored_split"] == "tuning"
    assert recorded["scored"]["size"] == 200 and recorded["train"]["size"] == 192
    scored = cli(evaluate.main, "--checkpoint", str(out / "random_model.pt"), "--data", "synthetic", "--json")
    assert scored.returncode == 0, scored.stderr
    said = json.loads(scored.stdout)
    assert said["split"] == "tuning" and said["n"] == 200
    assert said["top1"] == pytest.approx(results(out)["random"]["val_accuracy"], abs=1e-9)
