"""Scaling studies: the speedup/efficiency arithmetic, collect's CSV and plots on hand-made runs,
submit's sbatch commands (against a stand-in sbatch), and one real `local` study at 1 and 2 ranks."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli as in_process, job
from ddc_hpc import scaling
from ddc_hpc.results import Results

TINY = ["model.width=8", "data.limit=192", "sub.epochs=1", "global.epochs=1", "sub.batch_size=32",
        "global.batch_size=32", "run.threads=1", "run.strategy=ddc"]


def cli(*args, env=None, timeout=300):
    """`python -m ddc_hpc.scaling ARGS` as a user runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return job([sys.executable, "-m", "ddc_hpc.scaling", *map(str, args)], env=full_env, timeout=timeout)


@pytest.fixture
def main(monkeypatch):
    """scaling.main in this process, from the repository root: (exit code, stdout, stderr)."""
    monkeypatch.chdir(REPO)
    return lambda *args: in_process(scaling.main, *map(str, args))


def fake_results(world_size, sub=8.0, compose=0.5, glob=4.0, resumed=False, model="cifar_resnet20"):
    return {"strategy": "ddc", "world_size": world_size, "partitions": 4, "model": model,
            "dataset": "synthetic", "resumed": resumed,
            "sub": {"seconds": sub, "epochs": 1, "val_accuracy": 0.5, "images_per_second": 400 / sub,
                    "per_subnet_val_accuracy": [0.5] * 4},
            "compose": {"seconds": compose, "epochs": 0, "val_accuracy": 0.4, "max_abs_error": 1e-7},
            "global": {"seconds": glob, "epochs": 1, "val_accuracy": 0.6, "images_per_second": 800 / glob}}


def write_study(root: Path, runs: dict, manifest: dict | None = None) -> Path:
    for name, results in runs.items():
        (root / name).mkdir(parents=True)
        if results is not None:
            (root / name / "results.json").write_text(json.dumps(results))
    if manifest is not None:
        (root / "scaling.json").write_text(json.dumps(manifest))
    return root


# ---- arithmetic ---------------------------------------------------------------------------------

def test_strong_speedup_and_efficiency():
    assert scaling.speedup(10.0, 5.0, 1, 2) == 2.0
    assert scaling.efficiency(2.0, 1, 2) == 1.0
    assert scaling.speedup(10.0, 4.0, 2, 8, "strong") == 2.5
    assert scaling.efficiency(2.5, 2, 8) == pytest.approx(0.625)
    assert scaling.ideal_speedup(2, 8) == 4.0


def test_weak_scaling_is_scaled_speedup():
    # work doubles with the count: the same time at 2x the count is perfect scaling
    assert scaling.speedup(10.0, 10.0, 1, 2, "weak") == 2.0
    assert scaling.efficiency(scaling.speedup(10.0, 10.0, 1, 2, "weak"), 1, 2) == 1.0
    assert scaling.efficiency(scaling.speedup(10.0, 12.5, 1, 4, "weak"), 1, 4) == pytest.approx(0.8)


@pytest.mark.parametrize("bad", [lambda: scaling.speedup(0, 1, 1, 2), lambda: scaling.speedup(1, 1, 1, 2, "odd"),
                                 lambda: scaling.ideal_speedup(0, 2), lambda: scaling.scaling_table(
                                     [scaling.run_row(Results.from_dict(fake_results(1)), nodes=1)], "sideways")])
def test_arithmetic_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        bad()


def test_table_uses_the_smallest_count_as_baseline_and_nodes_when_they_vary():
    rows = [scaling.run_row(Results.from_dict(fake_results(8, sub=2.5, glob=1.5)), nodes=2),
            scaling.run_row(Results.from_dict(fake_results(4, sub=5.0, glob=2.5)), nodes=1),
            scaling.run_row(Results.from_dict(fake_results(16, sub=1.5, glob=1.0)), nodes=4)]
    table = scaling.scaling_table(rows)
    assert [r["count"] for r in table] == [1, 2, 4] and {r["unit"] for r in table} == {"nodes"}
    assert [r["ranks"] for r in table] == [4, 8, 16]
    assert table[0]["speedup"] == 1.0 and table[0]["efficiency"] == 1.0
    assert table[1]["total_seconds"] == pytest.approx(2.5 + 0.5 + 1.5)
    assert table[1]["speedup"] == pytest.approx(8.0 / 4.5)
    assert table[2]["sub_speedup"] == pytest.approx(5.0 / 1.5)
    assert table[2]["sub_efficiency"] == pytest.approx(5.0 / 1.5 / 4)
    assert table[2]["global_efficiency"] == pytest.approx(2.5 / 4)
    assert table[0]["random_speedup"] is None  # no baseline phase: nothing to compare
    assert scaling.scaling_table(rows[:1])[0]["unit"] == "ranks"  # one node count: ranks on the x axis


# ---- collect --------------------------------------------------------------------------------------

def test_collect_writes_csv_and_plots(tmp_path):
    study = write_study(tmp_path / "study", {
        "n1": fake_results(1, sub=8, glob=4), "n2": fake_results(2, sub=4.2, glob=2.5),
        "n4": fake_results(4, sub=2.4, glob=1.8), "n8": None})  # n8 never finished
    done = cli("collect", study)  # the real command line, once
    assert done.returncode == 0, done.stderr
    assert "n8 has no results.json" in done.stderr
    with open(study / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["ranks"] for r in rows] == ["1", "2", "4"]
    assert {r["scaling"] for r in rows} == {"strong"} and {r["unit"] for r in rows} == {"ranks"}
    assert float(rows[1]["speedup"]) == pytest.approx(12.5 / 7.2, rel=1e-5)
    assert float(rows[2]["efficiency"]) == pytest.approx(12.5 / 4.7 / 4, rel=1e-5)
    assert float(rows[2]["global_images_per_second"]) == pytest.approx(800 / 1.8, rel=1e-5)
    assert rows[0]["random_seconds"] == ""
    for name in ("scaling_speedup.png", "scaling_efficiency.png"):
        assert (study / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "strong scaling over ranks" in done.stdout


def test_collect_takes_nodes_and_mode_from_the_manifest(tmp_path, main):
    manifest = {"mode": "weak", "unit": "nodes", "runs": [{"dir": "n1", "nodes": 1}, {"dir": "n2", "nodes": 2}]}
    study = write_study(tmp_path / "s", {"n1": fake_results(4, sub=4, glob=2),
                                         "n2": fake_results(8, sub=4, glob=2.5)}, manifest)
    out = tmp_path / "elsewhere"
    assert main("collect", study, "--out", out).returncode == 0
    with open(out / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["nodes"], r["ranks"], r["unit"], r["scaling"]) for r in rows] == [
        ("1", "4", "nodes", "weak"), ("2", "8", "nodes", "weak")]
    assert float(rows[1]["speedup"]) == pytest.approx(2 * 6.5 / 7.0, rel=1e-5)


def test_collect_warns_about_resumed_runs(tmp_path, main):
    study = write_study(tmp_path / "s", {"n1": fake_results(1), "n2": fake_results(2, resumed=True)})
    done = main("collect", study)
    assert done.returncode == 0 and "resumed" in done.stderr


@pytest.mark.parametrize("runs, message", [
    ({"n1": None}, "no finished runs"),
    ({"n1": fake_results(1), "n2": fake_results(2, model="vgg11")}, "different problems"),
])
def test_collect_bad_input_exits_2(tmp_path, main, runs, message):
    done = main("collect", write_study(tmp_path / "s", runs))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (["collect", "/nonexistent/dir"], "not a directory"),
    (["local", "--ranks", "0", "2"], "positive"),
    (["local", "--ranks", "2", "2"], "twice"),
    (["local", "--ranks", "1", "--config", "/no/such.toml"], "no such file"),
    (["local", "--ranks", "1", "--set", "sub.epoch=2"], "unknown key"),
    (["local", "--ranks", "1", "--weak", "sub.lr"], "positive integer"),
    (["local", "--ranks", "1", "--launcher", "mpiexec -n 4"], "{ranks}"),
    (["submit", "--nodes", "1", "--template", "slurm/none.sbatch", "--config", "jobs/quickstart.toml"],
     "no such file"),
    (["submit", "--nodes", "1", "--template", "slurm/cpu.sbatch"], "needs --config"),
    (["bogus"], "invalid choice"),
])
def test_bad_arguments_exit_2(main, args, message):
    done = main(*args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


# ---- submit ---------------------------------------------------------------------------------------

def test_submit_one_job_per_node_count_and_a_dependent_collect(tmp_path, fake_sbatch, main):
    log = fake_sbatch
    out = tmp_path / "study"
    done = main("submit", "--nodes", "4", "1", "2", "--template", "slurm/gpu.sbatch", "--config",
               "jobs/quickstart.toml", "--out", out, "--set", "sub.epochs=1", "--sbatch-arg=--account=me")
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 4
    for call, n in zip(calls[:3], (1, 2, 4)):
        assert call[:3] == ["--parsable", f"--nodes={n}", f"--job-name=ddc-scaling-n{n}"]
        assert f"--output={out}/n{n}/slurm-%j.out" in call and "--account=me" in call
        assert call[-5:] == ["slurm/gpu.sbatch", "jobs/quickstart.toml", str(out / f"n{n}"), "--set", "sub.epochs=1"]
        assert (out / f"n{n}").is_dir()
    collect = calls[3]
    assert "--dependency=afterany:101:102:103" in collect and "--account=me" in collect
    assert any(a.startswith("--wrap=") and "ddc_hpc.scaling collect" in a and str(out) in a for a in collect)
    manifest = json.loads((out / "scaling.json").read_text())
    assert manifest["unit"] == "nodes" and manifest["mode"] == "strong" and manifest["collect_job_id"] == "104"
    assert [(r["dir"], r["nodes"], r["job_id"]) for r in manifest["runs"]] == [
        ("n1", 1, "101"), ("n2", 2, "102"), ("n4", 4, "103")]


def test_submit_weak_scaling_grows_the_key_and_dry_run_submits_nothing(tmp_path, fake_sbatch, main):
    log = fake_sbatch
    done = main("submit", "--nodes", "1", "2", "4", "--template", "slurm/cpu.sbatch", "--config",
               "jobs/quickstart.toml", "--set", "data.limit=1000", "--weak", "data.limit", "--out",
               tmp_path / "w", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert not log.exists()
    assert "data.limit=2000" in done.stdout and "data.limit=4000" in done.stdout and "dry run" in done.stdout
    assert json.loads((tmp_path / "w" / "scaling.json").read_text())["mode"] == "weak"


def test_submit_refuses_a_used_out_dir(tmp_path, fake_sbatch, main):
    (tmp_path / "s" / "n1").mkdir(parents=True)
    (tmp_path / "s" / "n1" / "results.json").write_text("{}")
    done = main("submit", "--nodes", "1", "--template", "slurm/cpu.sbatch", "--config", "jobs/quickstart.toml",
                "--out", tmp_path / "s")
    assert done.returncode == 2 and "not empty" in done.stderr


# ---- a real local study -----------------------------------------------------------------------------

@pytest.mark.slow
def test_local_study_at_1_and_2_ranks(tmp_path):
    out = tmp_path / "local"
    sets = [a for s in TINY for a in ("--set", s)]
    done = cli("local", "--ranks", "1", "2", "--config", "jobs/quickstart.toml", *sets, "--out", out, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    for n in (1, 2):
        assert json.loads((out / f"n{n}" / "results.json").read_text())["world_size"] == n
    with open(out / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["ranks"] for r in rows] == ["1", "2"] and rows[0]["speedup"] == "1"
    assert float(rows[1]["speedup"]) > 0 and float(rows[1]["sub_seconds"]) > 0
    assert (out / "scaling_speedup.png").exists() and (out / "scaling_efficiency.png").exists()
