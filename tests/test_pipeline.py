"""The whole pipeline through its CLI, at 1, 2 and 4 ranks, as a user runs it.

Jobs that end normally run in-process in the stage of their world size (conftest: `ranks`);
those that must end the job (a stray collective) or test launching itself are launched."""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, cli, each_world, inprocess, job, launch, mpiexec, results, run_pipeline, run_pipeline_here, sets
from ddc_hpc import evaluate, run

PROMISED = {"strategy", "world_size", "partitions", "model", "dataset", "sub", "compose", "global", "random"}
PER_PHASE = {"seconds", "epochs", "val_accuracy"}


@pytest.mark.parametrize("ranks", [pytest.param(1, marks=pytest.mark.ranks(1)),
                                   pytest.param(2, marks=[pytest.mark.ranks(2), pytest.mark.quick]),
                                   pytest.param(4, marks=pytest.mark.ranks(4))])
def test_pipeline_completes_with_every_promised_key(ranks, tiny_run):
    out, done = tiny_run  # the stage's shared run at `ranks` ranks is this very job
    assert done.returncode == 0, done.stderr[-3000:]
    r = results(out)
    assert PROMISED <= set(r)
    for phase in ("sub", "compose", "global", "random"):
        assert PER_PHASE <= set(r[phase]), phase
    assert r["world_size"] == ranks and r["partitions"] == 4
    assert len(r["sub"]["per_subnet_val_accuracy"]) == 4
    assert r["compose"]["max_abs_error"] <= 1e-4
    # every rank trained alone: its sub-phase world reached no one (a collective on the world there
    # would have ended the job: the DDC_STRAY tests below)
    assert r["sub"]["reach_per_rank"] == [1] * ranks
    for name in ("model.pt", "random_model.pt", "composed_model.pt", "metrics.csv", "config.toml",
                 "accuracy.png", "phase_seconds.png", *(f"subnet_{k}.pt" for k in range(4))):
        assert (out / name).exists(), name
    assert len(list((out / "logs").glob("rank*.log"))) == ranks
    assert "GNet-T as composed: scored" in done.stdout and "DDC total" in done.stdout


@pytest.mark.ranks(1)
def test_compiled_phases_train_compose_and_save_like_eager_ones(tmp_path):
    """sub.compile / global.compile run the networks through torch.compile (here its "eager"
    backend: dynamo's tracing without inductor's minutes of code generation); checkpoints keep the
    plain state_dict keys, so composition and the saved networks are the same as eager training's."""
    out = tmp_path / "run"
    done = run_pipeline_here(out, "run.strategy=ddc", "sub.compile=eager", "global.compile=eager")
    assert done.returncode == 0, done.stderr[-3000:]
    r = results(out)
    assert r["compose"]["max_rel_error"] < 1e-4 and r["global"]["epochs"] == 1
    state = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]


def test_composed_init_accuracy_equals_serial_recomputation(tiny_run):
    out, _ = tiny_run
    r = results(out)
    evaluated = cli(evaluate.main, "--checkpoint", str(out / "composed_model.pt"), "--run", str(out), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["top1"] == pytest.approx(r["compose"]["init_val_accuracy"], abs=1e-9)


def _evaluate(checkpoint, *args):
    return cli(evaluate.main, "--checkpoint", str(checkpoint), *args)


def test_evaluate_on_the_training_data_scores_only_the_held_out_split(tiny_run):
    out, _ = tiny_run
    done = _evaluate(out / "model.pt", "--data", "synthetic", "--json")
    assert done.returncode == 0, done.stderr
    scored = json.loads(done.stdout)
    assert scored["n"] == 400 and scored["split"] == "validation"  # 1600 of the 2000 are training samples
    assert scored["top1"] == pytest.approx(results(out)["global"]["val_accuracy"], abs=1e-9)
    said = _evaluate(out / "model.pt", "--data", "synthetic")
    assert "on 400 samples: the validation split the run held out" in said.stdout, said.stdout


def test_evaluate_scores_a_test_split_and_says_when_it_scores_everything(tiny_run, tmp_path):
    out, _ = tiny_run
    x, y = np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8), np.arange(30) % 10
    np.savez(tmp_path / "split.npz", x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:])
    np.savez(tmp_path / "flat.npz", x=x, y=y)
    tested = json.loads(_evaluate(out / "model.pt", "--data", f"npz:{tmp_path / 'split.npz'}", "--json").stdout)
    assert tested["n"] == 10 and tested["split"] == "test"
    done = _evaluate(out / "subnet_1.pt", "--data", f"npz:{tmp_path / 'flat.npz'}")
    assert done.returncode == 0, done.stderr
    assert "on 30 samples: every sample of" in done.stdout and "trained on synthetic, a different source" in done.stdout


@pytest.mark.parametrize("shape", [(20, 16, 16, 3), (20, 32, 32, 1)])
def test_evaluate_refuses_data_shaped_unlike_the_training_data(tiny_run, tmp_path, shape):
    out, _ = tiny_run
    np.savez(tmp_path / "other.npz", x=np.zeros(shape, np.uint8), y=np.arange(20) % 10)
    done = _evaluate(out / "model.pt", "--data", f"npz:{tmp_path / 'other.npz'}")
    assert done.returncode == 2, done.stderr
    assert f"holds samples of shape {shape[1:]} but the network was trained on" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.ranks(4)
def test_more_ranks_than_subnetworks_train_in_groups(mpi_tmp_path):
    out = mpi_tmp_path / "run"
    done = run_pipeline_here(out, "decompose.partitions=2", "run.strategy=ddc")
    assert done.returncode == 0, done.stderr[-3000:]
    r = results(out)
    assert r["partitions"] == 2 and len(r["sub"]["per_subnet_val_accuracy"]) == 2
    # only allreduces inside each sub-network's own group of 2 ranks, none on the world
    assert r["sub"]["reach_per_rank"] == [2] * 4
    assert r["compose"]["max_abs_error"] <= 1e-4


@pytest.mark.ranks(2)
def test_a_flatten_fc_network_satisfies_theorem_2_1_per_tile_field_with_crop_and_overlap(mpi_tmp_path):
    """VGG (flatten-FC head): compose places each sub-network at its tile's field, which a crop
    insets ((1, 2) on the 4x4 map here, not the uncropped grid's (0, 3)); compose checks it."""
    out = mpi_tmp_path / "run"
    done = run_pipeline_here(out, "model.name=vgg11", 'data.source="synthetic:size=128"', "data.limit=64",
                             "decompose.overlap=8", "decompose.crop=16", "run.strategy=ddc")
    assert done.returncode == 0, done.stderr[-3000:]
    r = results(out)
    assert 0 <= r["compose"]["max_rel_error"] <= 1e-4 and r["compose"]["max_abs_error"] >= 0
    assert "per tile field (flatten-FC head)" in (out / "logs" / "rank0.log").read_text()


@pytest.mark.parametrize("ranks, partitions, kind, named", [
    (2, 4, "", "StrayCollective in phase 'sub': a stray barrier (DDC_STRAY)"),  # R <= K: alone, MPI
    (2, 4, "torch", "Default process group has not been initialized"),  # R <= K: no torch.distributed at all
    (4, 2, "", "StrayCollective in phase 'sub': a stray barrier (DDC_STRAY)"),  # R > K: the world is off limits
])
def test_a_stray_collective_in_the_sub_phase_ends_the_job(ranks, partitions, kind, named, tmp_path):
    """DDC_STRAY makes the sub phase run one collective on the world: the job must fail, naming it."""
    out = tmp_path / "run"
    done = run_pipeline(ranks, out, f"decompose.partitions={partitions}", "run.strategy=ddc", extra=("--debug",),
                        env={"DDC_STRAY": f"sub:{kind}" if kind else "sub"}, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert named in done.stderr and not (out / "results.json").exists()
    if kind == "torch":
        assert "dist.all_reduce" in done.stderr  # the traceback (--debug) shows the stray call
    assert not list(out.glob("subnet_*.pt"))  # it failed before any training


def test_bad_config_value_exits_2_without_traceback(tmp_path):
    done = cli(run.main, "--out", str(tmp_path / "run"), *sets("sub.epochs=-3"))
    assert done.returncode == 2
    assert "sub.epochs" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.ranks(4)
def test_bad_config_at_four_ranks_is_reported_once(mpi_tmp_path):
    done = run_pipeline_here(mpi_tmp_path / "run", "run.strategy=dcc")
    assert done.returncode == 2
    assert done.stderr.count("did you mean 'ddc'") == 1 and "Traceback" not in done.stderr


@pytest.mark.ranks(2)
def test_dry_run_prints_the_plan_and_writes_nothing(mpi_tmp_path):
    out = mpi_tmp_path / "run"
    done = inprocess("--out", str(out), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "rank -> sub-networks: 0:[0, 2], 1:[1, 3]" in done.stdout
    assert done.stdout.count("dry run: nothing trained, nothing written") == 1
    assert "1600 train / 400 val samples, 10 classes, labels 0..9" in done.stdout
    assert not out.exists() and not list(mpi_tmp_path.iterdir())  # no run folder, no logs


@pytest.mark.parametrize("kind", ["npz", "npz-compressed", "h5"])
def test_dry_run_checks_the_data_without_reading_a_sample(kind, tmp_path, monkeypatch, capsys):
    from ddc_hpc.data import hdf5, import_dataset, sources
    from ddc_hpc.run import main

    x, y = np.zeros((60, 16, 16, 3), np.uint8), np.arange(60) % 10
    (np.savez_compressed if kind == "npz-compressed" else np.savez)(tmp_path / "d.npz", x=x, y=y)
    source = f"npz:{tmp_path / 'd.npz'}"
    if kind == "h5":
        import_dataset("npz", str(tmp_path / "d.npz"), tmp_path / "d.h5")
        source = f"h5:{tmp_path / 'd.h5'}"

    def no_reading(*args, **kwargs):
        raise AssertionError("a dry run read samples")

    for cls, name in ((sources.ArrayStore, "read"), (sources.DeferredArray, "__getitem__"),
                      (hdf5.H5Store, "read"), (hdf5.H5Store, "read_all")):
        monkeypatch.setattr(cls, name, no_reading)
    with pytest.raises(SystemExit) as exited:
        main(["--dry-run", "--out", str(tmp_path / "run"), *sets(f"data.source={source}", "model.width=8")])
    printed = capsys.readouterr()
    assert exited.value.code == 0, printed.err
    assert "48 train / 12 val samples, 10 classes, labels 0..9" in printed.out
    assert not (tmp_path / "run").exists()


@pytest.mark.ranks(2)
def test_metrics_csv_has_a_row_per_epoch_and_phase(tiny_run):
    out, _ = tiny_run
    lines = (out / "metrics.csv").read_text().splitlines()
    phases = [line.split(",")[0] for line in lines[1:]]
    assert sorted(set(phases)) == ["global", "random", "sub_0", "sub_1", "sub_2", "sub_3"]
    assert phases.count("random") == 2  # sub.epochs + global.epochs, the paper's protocol


@pytest.mark.ranks(2)
def test_epoch_ends_are_on_one_job_clock(tiny_run):
    out, _ = tiny_run
    r = results(out)
    for phase in ("global", "random"):
        ends = [row["elapsed"] for row in r[phase]["history"]]
        assert r[phase]["elapsed_start"] < ends[0] and ends == sorted(ends) and ends[-1] <= r[phase]["elapsed_end"]
        assert all(b - a >= row["seconds"] for a, b, row in zip(ends, ends[1:], r[phase]["history"][1:]))
    sub_0 = [row["elapsed"] for row in r["sub"]["histories"][0]]  # rank 0's, as the phases after it
    assert r["sub"]["elapsed_start"] < sub_0[0] and sub_0[-1] <= r["sub"]["elapsed_end"] <= r["global"]["elapsed_start"]
    assert r["global"]["elapsed_end"] <= r["random"]["elapsed_start"]
    assert r["sub"]["imbalance_seconds"] >= 0 and r["compose"]["init_eval_seconds"] > 0
    assert r["compose"]["recalibrate_seconds"] > 0 and 0 <= r["compose"]["recalibrated_val_accuracy"] <= 1
    assert "elapsed" in (out / "metrics.csv").read_text().splitlines()[0].split(",")


@pytest.mark.ranks(2)
def test_schedules_and_bn_recalibration_through_the_pipeline(mpi_tmp_path):
    out = mpi_tmp_path / "run"
    done = run_pipeline_here(out, "global.epochs=2", "global.bn_recalibrate_batches=2", "global.schedule=cosine",
                             "global.warmup_epochs=0.5", "random.bn_recalibrate_batches=2", "random.steps_per_epoch=2",
                             "random.milestones=[1, 2]", "random.gammas=[0.5, 0.1]")
    assert done.returncode == 0, done.stderr[-3000:]
    r = results(out)
    assert 0 <= r["compose"]["recalibrated_val_accuracy"] <= 1 and r["compose"]["recalibrate_seconds"] > 0
    assert "GNet-T BN recalibration (full images)" in done.stdout and "GNet-T BN-recalibrated: scored" in done.stdout
    assert r["compose"]["recalibrated_eval_seconds"] > 0
    glob, rand = r["global"]["history"], r["random"]["history"]
    assert glob[-1]["lr"] < 0.2 * glob[0]["lr"]  # cosine: near zero at the end of the phase
    assert [row["lr"] for row in rand] == pytest.approx([2e-3, 1e-3, 1e-4])
    assert [row["train_samples"] for row in rand] == [2 * 32 * 2] * 3  # 2 steps of 32 on each of 2 ranks


@pytest.mark.ranks(2)
def test_saved_global_model_reloads(tiny_run):
    out, _ = tiny_run
    saved = torch.load(out / "model.pt", weights_only=False)
    from ddc_hpc import build_model

    spec = dict(saved["spec"])
    model = build_model(spec.pop("name"), spec.pop("num_classes"), **spec)
    model.load_state_dict(saved["state_dict"])
    assert np.isfinite(sum(p.sum().item() for p in model.parameters()))


@pytest.mark.parametrize("ranks, partitions", [pytest.param(2, 4, marks=pytest.mark.ranks(2)),
                                               pytest.param(4, 2, marks=pytest.mark.ranks(4))])
def test_mpi4py_engine_runs_the_data_parallel_phases(ranks, partitions, mpi_tmp_path):
    out = mpi_tmp_path / "run"
    done = run_pipeline_here(out, "run.backend=mpi4py", f"decompose.partitions={partitions}")
    assert done.returncode == 0, done.stderr[-3000:]
    r = results(out)
    assert r["backend"] == "mpi4py" and r["compose"]["max_abs_error"] <= 1e-4
    assert r["global"]["epochs"] == 1 and r["random"]["epochs"] == 2


def _snapshot(out) -> dict:
    """Every file under a run directory: its bytes and modification time."""
    return {p.relative_to(out): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}


@each_world(1, 2)
def test_rerunning_a_finished_run_rewrites_nothing_at_one_and_two_ranks(ranks, tiny_run):
    out, _ = tiny_run  # a rerun that passes changes nothing the other readers of the run see
    before = _snapshot(out)
    again = run_pipeline_here(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished earlier (results.json written " in again.stdout, again.stdout
    assert "GNet-T trained (global)" in again.stdout and f"written to {out}/" in again.stdout
    assert again.stdout.count("finished earlier") == 1  # rank 0 speaks for all
    assert _snapshot(out) == before, f"rerun at {ranks} rank(s) changed the finished run"
    changed = run_pipeline_here(out, "sub.lr=0.1")
    assert changed.returncode == 2 and "finished with a different configuration" in changed.stderr
    assert changed.stderr.count("different configuration") == 1
    assert _snapshot(out) == before


@pytest.mark.ranks(1)
def test_a_finished_run_rerun_at_another_rank_count_prints_its_table_without_training(tiny_run):
    out, _ = tiny_run  # finished at 1 rank, in this stage; the rerun is launched at 2
    before = _snapshot(out)
    again = run_pipeline(2, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished earlier (results.json written ") == 1, again.stdout  # rank 0 speaks for all
    assert "GNet-T trained (global)" in again.stdout and f"written to {out}/" in again.stdout
    assert _snapshot(out) == before, "the rerun at 2 ranks trained or wrote (logs, checkpoints, results)"
    assert results(out)["world_size"] == 1 and [c["ranks"] for c in results(out)["rank_counts"]] == [1]


def open_files_under(folder) -> list[str]:
    """The files under `folder` that this process holds open (Linux's /proc/self/fd)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if target.startswith(f"{folder}/"):
            held.append(target)
    return held


@each_world(1, 2, 4)
def test_an_in_process_job_leaves_no_file_of_its_run_open(ranks, tiny_run):
    out, _ = tiny_run  # this stage's in-process job: every rank logged to its own file, then closed it
    assert all((out / "logs" / f"rank{r}.log").stat().st_size for r in range(ranks))
    assert open_files_under(out.resolve()) == []


@pytest.mark.ranks(1)
def test_an_in_process_job_that_fails_leaves_its_log_file_closed(tmp_path):
    out = tmp_path / "run"  # fails where the sub phase starts, its log open: the traceback holds the pipeline
    done = run_pipeline_here(out, env={"DDC_FAULT": "sub:0"})
    assert done.returncode == 1 and "injected fault" in done.stderr, done.stderr[-2000:]
    logged = (out / "logs" / "rank0.log").read_text()  # why the rank stopped, with where
    assert "ended by RuntimeError: injected fault DDC_FAULT=sub:0" in logged and "in phase_fault" in logged
    assert open_files_under(out.resolve()) == []


def test_multi_rank_launches_find_the_venvs_mpiexec_without_an_activated_venv(monkeypatch):
    """`python -m pytest` from a venv that is not activated: mpiexec is not on PATH."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    done = launch(2, "ddc_hpc.info", "--model", "cnn11", "--partitions", "2", "--input-size", "32")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("ratio") == 2  # one table per rank


def test_pytest_under_mpiexec_prints_one_mpi_information_block():
    """./dev test's mpiexec stages: pytest-mpi's block once (rank 0), not once per rank."""
    command = [mpiexec(), "-n", "2", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--with-mpi",
               "-m", "mpi", "tests/test_comm_mpi.py::test_world_matches_mpi"]
    done = job(command, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("MPI Information") == 1, done.stdout


@pytest.mark.ranks(1)
def test_progress_lines_within_an_epoch_follow_run_progress_seconds(tiny_run, tmp_path):
    done = run_pipeline_here(tmp_path / "run", "run.strategy=random", "run.progress_seconds=0.001")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^\[random\] epoch 1/2  step 1/6  \d+ img/s  epoch ETA \d+ s$", done.stdout, re.M), done.stdout
    assert "step 6/6" not in done.stdout  # the epoch's own line reports the last step
    _, default = tiny_run  # 30 s by default: a short run prints one line per epoch only
    assert not re.search(r"step \d+/\d+", default.stdout), default.stdout


@pytest.mark.ranks(1)
def test_no_global_epochs_reports_the_composed_network_as_gnet_t(tmp_path):
    """...as the global phase starts from it: BN-recalibrated, scored once (the score with the
    tiles' statistics skipped, as the time-to-accuracy study does)."""
    out = tmp_path / "run"
    done = run_pipeline_here(out, "run.strategy=ddc", "global.epochs=0", "global.bn_recalibrate_batches=2",
                             "global.evaluate_before_recalibration=false")
    assert done.returncode == 0, done.stderr[-3000:]
    r = results(out)
    assert "init_val_accuracy" not in r["compose"]
    assert r["global"]["epochs"] == 0 and r["global"]["val_accuracy"] == r["compose"]["recalibrated_val_accuracy"]
    assert "GNet-T trained (global)" in done.stdout
