"""The paper's extensions through the whole pipeline at 2 ranks (in-process in the 2-rank stage):
volumes, regression, signals."""

from __future__ import annotations

import pytest

from conftest import REPO, inprocess, results, sets

pytestmark = pytest.mark.ranks(2)


def _run(shared, *args):
    out = shared / "run"
    done = inprocess("--out", str(out), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return results(out)


def test_volume_job_composes_eight_octant_subnetworks(mpi_tmp_path):
    r = _run(mpi_tmp_path, "--config", str(REPO / "jobs" / "volume-cnn3d-smoke.toml"))
    assert r["partitions"] == 8 and len(r["sub"]["per_subnet_val_accuracy"]) == 8
    assert r["compose"]["max_rel_error"] <= 1e-5  # Theorem 2.1 on full volumes


def test_regression_job_reports_mae_and_rmse_and_composes_the_mean(mpi_tmp_path):
    r = _run(mpi_tmp_path, "--config", str(REPO / "jobs" / "regression-resnet20-smoke.toml"))
    assert r["metric"] == "val_rmse"
    for phase in ("compose", "global", "random"):
        assert r[phase]["val_rmse"] > 0 and r[phase]["val_mae"] > 0
    assert len(r["sub"]["per_subnet_val_rmse"]) == 4
    assert r["compose"]["max_rel_error"] <= 1e-5  # F(x) == mean_k F_k(x), eq. 2.22


@pytest.mark.parametrize("model, task", [("mlp_autoencoder", "autoencoder"), ("gru", "classification")])
def test_signal_models_run_on_one_dimensional_tiles(model, task, mpi_tmp_path):
    r = _run(mpi_tmp_path, *sets(f"model.name={model}", f"model.task={task}", "model.width=32",
                                "data.source=synthetic1d:n=160", "data.augment=false", "sub.epochs=1",
                                "global.epochs=1", "run.threads=1"))
    assert r["compose"]["max_rel_error"] <= 1e-5
    assert r["metric"] == ("val_rmse" if task == "autoencoder" else "val_accuracy")
