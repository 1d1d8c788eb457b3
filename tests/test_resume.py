"""Checkpoints and resume: a run stopped by SIGUSR1 anywhere and resumed ends bitwise identical.

The stops are the job's own (DDC_STOP_AT raises SIGUSR1 in the rank), so these jobs run in-process
at their world size (conftest: `ranks`); the rank that reads another view of --out is its own job."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import sys
import warnings

import pytest
import torch

from conftest import (REPO, TINY, assert_seconds_cover_the_recorded_pieces, job, run_pipeline, run_pipeline_here, sets,
                      shared_tmp)
from ddc_hpc.checkpoint import CheckpointSeries
from ddc_hpc.errors import BadInput
from ddc_hpc.evaluate import load_network

DETERMINISTIC = ("run.deterministic=true", "sub.epochs=2", "global.epochs=2", "run.checkpoint_every=1")
METRICS = ("phase", "epoch", "loss", "val_loss", "val_accuracy", "val_top5", "lr", "train_samples")


def _metrics(out):
    with open(out / "metrics.csv") as f:
        return [tuple(row[c] for c in METRICS) for row in csv.DictReader(f)]


def _weights(path):
    return torch.load(path, weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The one reference run every stop point is compared with."""
    out = shared_tmp(tmp_path_factory, "resume") / "straight"
    done = run_pipeline_here(out, *DETERMINISTIC)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run.deterministic on cpu: deterministic algorithms (strict)" in (out / "logs" / "rank1.log").read_text()
    return out


@pytest.mark.ranks(2)
@pytest.mark.parametrize("stop_at", ["sub_1:1:3", "sub_2:2:1", "global:2:2", "random:3:1"])
def test_stopped_and_resumed_run_is_bitwise_identical(uninterrupted, stop_at, mpi_tmp_path):
    out = mpi_tmp_path / "run"
    stopped = run_pipeline_here(out, *DETERMINISTIC, env={"DDC_STOP_AT": stop_at})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert "checkpoint" in stopped.stderr and not (out / "results.json").exists()
    resumed = run_pipeline_here(out, *DETERMINISTIC)  # same --out: resumes by itself
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in (out / "logs" / "rank0.log").read_text() + (out / "logs" / "rank1.log").read_text()
    for name in ("model.pt", "random_model.pt", "subnet_1.pt"):
        a, b = _weights(uninterrupted / name), _weights(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _metrics(out) == _metrics(uninterrupted)
    assert_seconds_cover_the_recorded_pieces(json.loads((out / "results.json").read_text()))


@pytest.mark.ranks(2)
def test_ctrl_c_checkpoints_at_the_next_step_exits_130_and_the_run_resumes(mpi_tmp_path):
    """Ctrl-C on an interactive mpiexec (SIGINT to every rank) stops like SIGTERM: a checkpoint at
    the next step boundary, exit 130, one message naming the folder to resume from."""
    from mpi4py import MPI

    out = mpi_tmp_path / "run"
    stopped = run_pipeline_here(out, "run.strategy=random", env={"DDC_INTERRUPT_AT": "random:1:2"})
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    said = [line for line in stopped.stderr.splitlines() if line.strip()]  # every rank's, in rank order
    assert len(said) == 1 and said[0].startswith("interrupted (Ctrl-C): stop signal in phase random at epoch 1, "
                                                 "step 2: checkpoint written") and str(out) in said[0], said
    resumed = run_pipeline_here(out, "run.strategy=random")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[random] resuming at epoch 1, step 3" in (out / "logs" / "rank0.log").read_text()


def test_changed_config_is_refused(tiny_run):
    out, _ = tiny_run  # refused before anything is written
    refused = run_pipeline_here(out, "sub.lr=0.1")
    assert refused.returncode == 2 and "different configuration" in refused.stderr


@pytest.mark.ranks(1)
def test_operational_settings_may_change_on_resume_but_training_ones_may_not(tmp_path):
    out = tmp_path / "run"
    stopped = run_pipeline_here(out, "run.strategy=random", env={"DDC_STOP_AT": "random:1:2"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    refused = run_pipeline_here(out, "run.strategy=random", "run.seed=1")
    assert refused.returncode == 2 and "different configuration" in refused.stderr
    resumed = run_pipeline_here(out, "run.strategy=random", "run.collective_timeout=900", "run.checkpoint_every=0",
                                "run.backend=gloo", "run.device=cpu", "run.threads=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[random] resuming at epoch 1, step 3" in (out / "logs" / "rank0.log").read_text()


def test_a_rank_that_cannot_read_rank_0s_checkpoint_stops_the_job(tmp_path):
    """Rank 1 runs on a stale copy of --out (a node-local out dir, a lagging file-system view)."""
    out, stale = tmp_path / "run", tmp_path / "stale"
    extra = ("run.strategy=random", "random.epochs=2", "run.collective_timeout=60")
    stopped = run_pipeline(2, out, *extra, env={"DDC_STOP_AT": "random:2:1"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    shutil.copytree(out, stale)
    slot = stale / "checkpoints" / "random"
    newest = json.loads((slot / "manifest.json").read_text())["checkpoints"][-1]
    (slot / newest["file"]).write_bytes(b"not what rank 0 sees")  # an older complete one is still there
    run = [sys.executable, "-m", "ddc_hpc.run", *sets(*TINY, *extra)]
    command = [shutil.which("mpiexec"), "-n", "1", *run, "--out", str(out), ":", "-n", "1", *run, "--out", str(stale)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DDC_", "SLURM_"))}
    done = job(command, env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: rank 1: cannot read checkpoint {slot / newest['file']} (epoch 1, step 1" in done.stderr
    assert "file system shared by all nodes" in done.stderr and not (out / "results.json").exists()


@pytest.mark.ranks(1)
def test_resume_with_nothing_to_resume_is_refused(tmp_path):
    done = run_pipeline_here(tmp_path / "empty", extra=("--resume",))
    assert done.returncode == 2 and "no checkpoint" in done.stderr


def test_a_corrupt_checkpoint_falls_back_to_the_previous_complete_one(tmp_path):
    slot = CheckpointSeries(tmp_path, "global", "digest")
    slot.save({"epoch": 1}, epoch=1, step=0, finished=False)
    newest = slot.save({"epoch": 2}, epoch=2, step=0, finished=False)
    newest.write_bytes(newest.read_bytes()[:20])  # truncated after the manifest was written
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert slot.load_latest() == {"epoch": 1}
    assert any("corrupt" in str(w.message) for w in caught)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    slot = CheckpointSeries(tmp_path, "sub_0", "digest", keep=2)
    for epoch in range(4):
        slot.save({"epoch": epoch}, epoch=epoch, step=0, finished=False)
    assert sorted(p.name for p in slot.dir.glob("ckpt-*.pt")) == ["ckpt-000002.pt", "ckpt-000003.pt"]
    assert slot.load_latest() == {"epoch": 3}


class _Payload:
    """A pickle that runs a command when loaded: what a tampered .pt file would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_tampered_checkpoint_or_network_file_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    slot = CheckpointSeries(tmp_path, "global", "digest")
    slot.save({"epoch": 1, "model": _Payload(marker)}, epoch=1, step=0, finished=False)  # manifest agrees
    with pytest.raises(pickle.UnpicklingError):
        slot.load_latest()
    network = tmp_path / "model.pt"
    torch.save({"spec": _Payload(marker), "state_dict": {}}, network)
    with pytest.raises(BadInput, match="not a network saved by ddc_hpc.run"):
        load_network(network)
    assert not marker.exists()
