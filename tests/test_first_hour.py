"""A new user's first hour: the default output folder is stable (a rerun prints the finished table),
a stop says once where to resume from (in-process jobs end as main ends them), DDC's total is the same sum everywhere, a dry run of a
part-finished run says what is left, and the names the table uses are defined where first printed."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from conftest import REPO, TINY, inprocess, mpiexec, run_pipeline_here, sets
from ddc_hpc import report
from ddc_hpc.checkpoint import CheckpointSeries
from ddc_hpc.config import load_config
from ddc_hpc.results import Compose, Phase, Results, Sub
from ddc_hpc.run import default_out, main, parse_args


def test_the_default_output_folder_is_named_after_the_job_and_the_overrides():
    assert default_out(parse_args([])) == Path("runs/quickstart")
    assert default_out(parse_args(["--config", "jobs/cifar10-frontier.toml"])) == Path("runs/cifar10-frontier")
    digest = hashlib.sha256(b"sub.epochs=1").hexdigest()[:8]
    assert default_out(parse_args(["--set", "sub.epochs=1"])) == Path(f"runs/quickstart-{digest}")
    assert default_out(parse_args(["--set", "sub.epochs=2"])) != default_out(parse_args(["--set", "sub.epochs=1"]))


def _results() -> Results:
    row = {"epoch": 1, "seconds": 2.0, "val_accuracy": 0.4, "train_samples": 10, "train_seconds": 2.0}
    return Results(
        model="cifar_resnet20", partitions=2, strategy="both", world_size=2,
        sub=Sub(seconds=10.04, epochs=1, per_subnet=[0.3, 0.35], histories=[[row], [row]]),
        compose=Compose(seconds=0.31, init_metrics={"val_accuracy": 0.5}, recalibrated_metrics={"val_accuracy": 0.6},
                        init_eval_seconds=1.52, recalibrate_seconds=2.21, max_abs_error=1e-6),
        global_=Phase(seconds=20.33, epochs=1, metrics={"val_accuracy": 0.7}, history=[row]),
        random=Phase(seconds=30.0, epochs=2, metrics={"val_accuracy": 0.65}, history=[row, row]))


def test_a_rerun_of_the_plain_command_prints_the_finished_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "quickstart"
    out.mkdir(parents=True)
    (out / "config.toml").write_text(load_config().to_toml())
    report.write(out, _results())
    with pytest.raises(SystemExit) as exited:
        main([])
    printed = capsys.readouterr().out
    assert exited.value.code == 0 and "runs/quickstart finished earlier" in printed
    assert "GNet-T trained" in printed and not (out / "checkpoints").exists()


def test_ddcs_total_is_the_same_sum_in_the_table_the_report_and_the_figure(monkeypatch, tmp_path):
    results = _results()
    total = 10.04 + 0.31 + 1.52 + 2.21 + 20.33
    table = report.table(results)
    assert f"wall time {report.DDC_TOTAL} {total:.1f} s" in table
    assert report.time_rows(results)[report.DDC_TOTAL] == f"{total:.1f}"
    # the composed net's score shows its seconds, compose's own row its 0.3 s
    assert any(line.startswith("  GNet-T as composed: scored") and line.endswith("1.5") for line in table.splitlines())
    assert any(line.startswith("  compose: Gatherv") and line.endswith("0.3") for line in table.splitlines())
    figures = []
    plt = report.pyplot()
    monkeypatch.setattr(plt, "close", figures.append)
    report.phase_seconds_figure([{"name": "run", "results": results, "config": {}}], tmp_path / "phase_seconds.png")
    labels = [t.get_text() for ax in figures[0].axes for t in ax.texts]
    assert f"DDC\n{total:.1f} s" in labels


def test_a_dry_run_of_a_part_finished_run_says_what_is_left(tmp_path, capsys):
    out = tmp_path / "run"
    overrides = ["sub.steps_per_epoch=7", "model.width=8", "run.strategy=ddc"]
    digest = load_config(None, overrides).digest()
    CheckpointSeries(out / "checkpoints", "sub_0", digest).save({"x": 1}, epoch=6, step=0, finished=True)
    CheckpointSeries(out / "checkpoints", "sub_2", digest).save({"x": 1}, epoch=1, step=3, finished=False)
    with pytest.raises(SystemExit) as exited:
        main(["--out", str(out), "--dry-run", *sets(*overrides)])
    printed = capsys.readouterr().out
    assert exited.value.code == 0, printed
    assert "load sub-networks 0 (finished earlier), train sub-networks 1, 2 (resuming at epoch 2, step 4), 3" in printed
    assert "6 epoch(s) of 7 steps on their tiles" in printed  # train.steps_per_epoch, not a count of its own
    lines = printed.splitlines()
    for name in ("SNet", "GNet-T"):
        first = next(line for line in lines if name in line)
        assert f"{name}-k =" in first or f"{name} =" in first, (name, first)


def test_a_stop_is_reported_once_naming_the_folder_to_resume_from(tmp_path):
    """Two ranks, no --out: the message comes from rank 0 alone and names the default folder."""
    command = [mpiexec(), "-n", "2", sys.executable, "-m", "ddc_hpc.run",
               *sets(*TINY, "run.strategy=random", "random.epochs=2")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DDC_", "SLURM_"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", DDC_STOP_AT="random:1:2")
    stopped = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert stopped.stderr.count("stop signal in phase random at epoch 1, step 2") == 1, stopped.stderr
    folder = default_out(parse_args(sets(*TINY, "run.strategy=random", "random.epochs=2")))
    assert f"the checkpoints are in {folder}: run the same command again" in stopped.stderr
    assert (tmp_path / folder / "checkpoints" / "random").is_dir()


@pytest.mark.ranks(1)
def test_an_in_process_job_ends_as_main_ends_it(tmp_path):
    """run_here (the suite's in-process jobs) runs main's job: a bad command line exits 2 with
    argparse's usage, a stop says where the checkpoints are and how to resume."""
    bad = inprocess("--no-such-flag")
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad.stderr, bad.stderr
    with pytest.raises(SystemExit) as exited, redirect_stderr(io.StringIO()):
        main(["--no-such-flag"])
    assert exited.value.code == 2
    out = tmp_path / "run"
    stopped = run_pipeline_here(out, "run.strategy=random", env={"DDC_STOP_AT": "random:1:1"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert f"the checkpoints are in {out}: run the same command again (it uses --out {out}) to resume" in stopped.stderr
