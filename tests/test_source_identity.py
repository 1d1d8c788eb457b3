"""A run records what data it trained on (resolved path, content digest, the directory it started in),
so evaluate --data recognises that data however it is named and scores only the held-out split."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

from conftest import results, run_pipeline_here
from ddc_hpc.checkpoint import save_torch
from ddc_hpc.data import resolve_source, same_data, source_identity
from ddc_hpc.evaluate import main as evaluate_main
from ddc_hpc.phases import _model_file
from ddc_hpc.plan import build
from ddc_hpc.run import identify_source, prepare


def _npz(path):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (50, 16, 16, 3), dtype=np.uint8), y=np.arange(50) % 5)
    return path


@pytest.fixture
def saved_network(tmp_path, monkeypatch):
    """A network saved as a run saves it, from a run started in `started/` with a relative source."""
    started = tmp_path / "started"
    started.mkdir()
    _npz(started / "data.npz")
    monkeypatch.chdir(started)
    args = argparse.Namespace(config=None, set=["data.source=npz:data.npz", "model.num_classes=5", "model.width=8",
                                                "data.val_fraction=0.2"],
                              out=str(started / "run"), resume=False, dry_run=False, debug=False)
    plan = prepare(args)
    plan.source = identify_source(plan.config)  # as the pipeline does it, on rank 0
    path = started / "run" / "model.pt"
    save_torch(_model_file(build(plan.config, 1, plan.data.train.image_shape, 0), plan), path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return path, started / "data.npz", plan


def test_the_run_records_its_source_resolved_with_a_digest_and_where_it_started(saved_network):
    _, data, plan = saved_network
    assert plan.source["path"] == str(data) and plan.source["started_in"] == str(data.parent)
    assert plan.source["digest"].startswith("sha256:")


def test_the_same_file_named_absolutely_scores_only_the_held_out_split(saved_network, capsys):
    path, data, _ = saved_network
    evaluate_main(["--checkpoint", str(path), "--data", f"npz:{data}", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "validation" and result["n"] == 10  # 20 % of 50, never the 40 it trained on


def test_a_copy_of_the_file_is_the_same_data_and_other_content_is_not(saved_network, tmp_path, capsys):
    path, data, _ = saved_network
    shutil.copy(data, tmp_path / "copy.npz")
    evaluate_main(["--checkpoint", str(path), "--data", f"npz:{tmp_path / 'copy.npz'}", "--json"])
    assert json.loads(capsys.readouterr().out)["split"] == "validation"
    other = _npz(tmp_path / "other.npz")
    np.savez(other, x=np.zeros((50, 16, 16, 3), np.uint8), y=np.arange(50) % 5)
    evaluate_main(["--checkpoint", str(path), "--data", f"npz:{other}", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "all" and result["n"] == 50


def test_evaluate_run_reads_the_runs_relative_source_from_where_it_started(saved_network, capsys):
    path, _, _ = saved_network
    (path.parent / "config.toml").write_text(
        '[data]\nsource = "npz:data.npz"\nval_fraction = 0.2\n[model]\nnum_classes = 5\nwidth = 8\n')
    evaluate_main(["--checkpoint", str(path), "--run", str(path.parent), "--json"])
    assert json.loads(capsys.readouterr().out)["n"] == 10


def test_identities_compare_kind_options_and_content(tmp_path):
    a = _npz(tmp_path / "a.npz")
    assert resolve_source("npz:a.npz", tmp_path) == f"npz:{a}" and resolve_source("a.npz", tmp_path) == str(a)
    assert resolve_source(f"npz:{a}", "/elsewhere") == f"npz:{a}" and resolve_source("synthetic", tmp_path) == "synthetic"
    # a path spelled like its kind: the path is resolved, the kind kept (so evaluate --run finds the data)
    assert resolve_source("cifar10:cifar10", tmp_path) == f"cifar10:{tmp_path / 'cifar10'}"
    assert resolve_source("h5:h5?x=1", tmp_path) == f"h5:{tmp_path / 'h5'}?x=1"
    assert same_data(source_identity("npz:a.npz", tmp_path), source_identity(f"{a}"))
    assert not same_data(source_identity("synthetic:n=10"), source_identity("synthetic:n=20"))
    assert same_data(source_identity("synthetic:n=10"), source_identity("synthetic:n=10"))


@pytest.mark.ranks(1, 2)
def test_the_data_file_is_hashed_once_by_rank_0_and_not_by_a_dry_run(mpi_tmp_path, monkeypatch):
    from mpi4py import MPI

    from ddc_hpc import run

    if MPI.COMM_WORLD.Get_rank() == 0:
        _npz(mpi_tmp_path / "data.npz")
    MPI.COMM_WORLD.Barrier()
    hashed = []
    monkeypatch.setattr(run, "source_identity", lambda *a, **k: hashed.append(a) or source_identity(*a, **k))
    args = ("data.source=npz:" + str(mpi_tmp_path / "data.npz"), "model.num_classes=5", "data.val_fraction=0.2",
            "run.strategy=random")
    dry = run_pipeline_here(mpi_tmp_path / "dry", *args, extra=("--dry-run",))
    assert dry.returncode == 0 and hashed == [], dry.stderr
    done = run_pipeline_here(mpi_tmp_path / "run", *args)
    assert done.returncode == 0, done.stderr
    assert len(hashed) == (MPI.COMM_WORLD.Get_rank() == 0)
    assert results(mpi_tmp_path / "run")["source"]["digest"].startswith("sha256:")
