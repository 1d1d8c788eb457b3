"""ddc_hpc/study.py, the sweep of one job that `python -m ddc_hpc.scaling` and `python -m ddc_hpc.frontier`
share: `local` runs each point once and the same command again continues the study (a finished point is
not run again, a failed one is), a folder of another study is refused; `submit` sends the points as one
job array, whose tasks slurm/launch.sh hands their own point, and a collect job after it (one job per
point where the points cannot share an array). Nothing trains here (a stand-in launcher, sbatch and
srun); the real runs: tests/test_scaling.py's local study and tests/test_slurm.py's submitted frontier."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, cli, sets
from ddc_hpc import frontier

LINEAR = sets("sub.schedule=linear", "global.schedule=linear", "random.schedule=linear")
JOB = ["--config", "jobs/quickstart.toml", *LINEAR]


@pytest.fixture
def main(monkeypatch):
    """frontier.main in this process, from the repository root: (exit code, stdout, stderr)."""
    monkeypatch.chdir(REPO)
    return lambda *args: cli(frontier.main, *map(str, args))


@pytest.fixture
def fake_launcher(tmp_path, monkeypatch):
    """A launcher stand-in on PATH: records each command line; the point named in $FAIL_ONCE exits 75
    (stopped) the first time, every other run writes its out dir's results.json (finished)."""
    bin_dir = tmp_path / "launcher"
    bin_dir.mkdir()
    log = tmp_path / "launches.log"
    script = bin_dir / "fakelaunch"
    script.write_text(f"""#!{sys.executable}
import json, os, pathlib, sys
open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')
out = pathlib.Path(sys.argv[sys.argv.index('--out') + 1])
stopped = out / 'stopped-once'
if out.name == os.environ.get('FAIL_ONCE') and not stopped.exists():
    stopped.write_text('')
    sys.exit(75)
(out / 'results.json').write_text('{{}}')
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def launched(log) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_local_runs_each_point_once_and_the_same_command_continues_the_study(tmp_path, fake_launcher, main,
                                                                             monkeypatch):
    out = tmp_path / "frontier"
    local = ["local", "--budgets", "20", "30", "--seeds", "0", *JOB, "--ranks", "2", "--launcher", "fakelaunch {ranks}",
             "--points-only", "--out", out]
    monkeypatch.setenv("FAIL_ONCE", "b30-s0")
    first = main(*local)
    assert first.returncode == 1 and "b30-s0 failed with exit 75 (run the same command again" in first.stderr
    calls = launched(fake_launcher)
    assert [c[c.index("--out") + 1] for c in calls] == [str(out / "b20-s0"), str(out / "b30-s0")]
    assert calls[0][0] == "2" and calls[0][-4:] == ["--set", "run.budget=20", "--set", "run.seed=0"]
    again = main(*local)
    assert again.returncode == 0, again.stderr
    assert "b20-s0 finished; not run again" in again.stdout
    assert [c[c.index("--out") + 1] for c in launched(fake_launcher)[2:]] == [str(out / "b30-s0")]
    manifest = json.loads((out / "frontier.json").read_text())
    assert [(p["dir"], p["budget"], p["seed"], p["ranks"]) for p in manifest["points"]] == [
        ("b20-s0", 20, 0, 2), ("b30-s0", 30, 0, 2)]
    assert [(r["dir"], r["returncode"]) for r in manifest["runs"]] == [("b20-s0", 0), ("b30-s0", 75), ("b30-s0", 0)]
    other = main(*local, "--set", "sub.epochs=2")
    assert other.returncode == 2 and "holds another study" in other.stderr and "sets" in other.stderr


def test_submit_sends_the_points_as_one_job_array_then_only_what_is_left(tmp_path, fake_sbatch, main):
    out = tmp_path / "frontier"
    submit = ["submit", "--budgets", "20", "30", "--seeds", "0", "1", *JOB, "--template", "slurm/cpu.sbatch",
              "--out", out, "--sbatch-arg=--time=5", "--test", "synthetic"]
    done = main(*submit)
    assert done.returncode == 0, done.stderr
    array, collect = [json.loads(line) for line in fake_sbatch.read_text().splitlines()]
    args_file = out / "array.args"
    assert array[:5] == ["--parsable", "--nodes=1", "--job-name=ddc-frontier", "--array=0-3",
                         f"--output={out}/slurm-%A_%a.out"]
    assert f"--export=ALL,DDC_STUDY_ARGS={args_file}" in array and array[-2:] == ["--time=5", "slurm/cpu.sbatch"]
    tasks = [shlex.split(line) for line in args_file.read_text().splitlines()]  # one seed's frontier first
    assert [t[:2] for t in tasks] == [["jobs/quickstart.toml", str(out / n)] for n in ("b20-s0", "b30-s0", "b20-s1", "b30-s1")]
    assert tasks[3][2:] == [*LINEAR, "--set", "run.budget=30", "--set", "run.seed=1"]
    assert "--dependency=afterany:101" in collect and "--time=5" in collect
    wrap = shlex.split(next(a for a in collect if a.startswith("--wrap="))[len("--wrap="):])
    assert wrap[1:] == ["-m", "ddc_hpc.frontier", "collect", "--out", str(out), "--budgets", "20", "30", "--seeds",
                        "0", "1", "--test", "synthetic"]
    manifest = json.loads((out / "frontier.json").read_text())
    assert [(r["dir"], r["job_id"]) for r in manifest["runs"]] == [
        ("b20-s0", "101_0"), ("b30-s0", "101_1"), ("b20-s1", "101_2"), ("b30-s1", "101_3")]
    assert manifest["collect_job_id"] == "102"
    for name in ("b20-s0", "b30-s0", "b20-s1"):  # three finished: the one left goes alone, no array
        (out / name / "results.json").write_text("{}")
    again = main(*submit)
    assert again.returncode == 0, again.stderr
    single, collect = [json.loads(line) for line in fake_sbatch.read_text().splitlines()][2:]
    assert single[:3] == ["--parsable", "--nodes=1", "--job-name=ddc-frontier-b30-s1"]
    at = single.index("slurm/cpu.sbatch")
    assert single[at:] == ["slurm/cpu.sbatch", "jobs/quickstart.toml", str(out / "b30-s1"), *LINEAR,
                           "--set", "run.budget=30", "--set", "run.seed=1"]
    assert "--dependency=afterany:103" in collect and "1 point(s); 3 finished" in again.stdout


def test_launch_sh_hands_each_array_task_its_own_point(tmp_path):
    """slurm/launch.sh under a job array: task i runs line i + 1 of $DDC_STUDY_ARGS (quoted words kept)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    (bin_dir / "srun").chmod(0o755)
    points = [["jobs/quickstart.toml", str(tmp_path / f"point {i}"), "--set", f"run.budget={20 + 10 * i}"] for i in (0, 1)]
    (tmp_path / "array.args").write_text("".join(shlex.join(p) + "\n" for p in points))
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "1",
           "DDC_STUDY_ARGS": str(tmp_path / "array.args"), "SRUN_ARGS": str(tmp_path / "srun.args")}
    done = subprocess.run(["bash", "-c", "PYTHON=python SRUN_MPI=pmi2; source slurm/launch.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    srun = (tmp_path / "srun.args").read_text().splitlines()
    assert srun[-6:] == ["--config", "jobs/quickstart.toml", "--out", str(tmp_path / "point 1"), "--set", "run.budget=30"]
    assert (tmp_path / "point 1").is_dir() and not (tmp_path / "point 0").exists()


@pytest.mark.parametrize("args, message", [
    (["collect", "--out", "/no/such/study"], "no such study folder"),
    (["submit", *JOB, "--template", "slurm/none.sbatch"], "no such file"),
    (["local", *JOB, "--launcher", "mpiexec -n 4"], "{ranks}"),
    (["local", *JOB, "--ranks", "0"], "--ranks: must be a positive integer, got '0'"),
    (["local", "--config", "jobs/quickstart.toml"], "schedule"),  # a budget needs a schedule that anneals
])
def test_bad_arguments_exit_2(main, args, message):
    done = main(*args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_an_array_task_requeues_itself_not_its_array(monkeypatch):
    """The array's last task has SLURM_JOB_ID == the array's id, and `scontrol requeue <array id>`
    requeues every task (seen on SLURM 22.05: the other point was stopped too): a task names itself."""
    from ddc_hpc.comm import lifecycle

    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert lifecycle.slurm_job() == "41"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert lifecycle.slurm_job() == "41_1"
