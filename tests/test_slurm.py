"""End to end on a real one-node SLURM cluster (tools/slurm_cluster.sh): the sbatch templates, one MPI
world across srun's tasks, SIGUSR1 -> checkpoint -> requeue -> resume, the wrong --mpi diagnosis, and a
scaling study and a frontier submitted through sbatch side by side (the frontier as a job array, one point
requeued).

The cluster is brought up once per session and taken down at the end. Without SLURM (not installed,
not root) these tests skip, unless DDC_REQUIRE_SLURM=1 (CI), where that is a failure.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, sets, unavailable

CLUSTER = REPO / "tools" / "slurm_cluster.sh"
TINY = ["model.width=8", "data.limit=192", "sub.epochs=1", "global.epochs=1", "sub.batch_size=32",
        "global.batch_size=32", "run.threads=1", "run.strategy=ddc"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """Start the cluster; yields the environment for sbatch/srun (SLURM_CONF, the venv's python)."""
    if os.geteuid() != 0:
        unavailable("DDC_REQUIRE_SLURM", "the local SLURM cluster runs slurmctld/slurmd as root; run the tests as root")
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if not shutil.which(b)]
    if missing:
        unavailable("DDC_REQUIRE_SLURM", f"SLURM is not installed ({', '.join(missing)} missing): run tools/slurm_cluster.sh install")
    # A test session inside a SLURM job must not leak that job's variables into our cluster's jobs.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "DDC_FAULT", "DDC_STOP_AT"))
           and k not in ("DDC_SLURM_DIR", "PMI_FD", "PMI_RANK", "PMI_SIZE")}
    up = subprocess.run([str(CLUSTER), "up"], env=env, capture_output=True, text=True, timeout=180)
    if up.returncode != 0:
        unavailable("DDC_REQUIRE_SLURM", f"tools/slurm_cluster.sh up failed (exit {up.returncode}): {up.stderr[-3000:]}")
    exported = dict(re.findall(r"^export (\w+)=(.*)$", up.stdout, re.M))
    env.update(exported)
    bin_dir = str(Path(sys.executable).parent)  # the venv's python and mpiexec, as ./dev sets up
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(REPO),
               DDC_PYTHON=sys.executable, DDC_SRUN_MPI="pmi2")  # no PMIx here; pmi2 with the PyPI MPICH
    try:
        yield env
    finally:
        subprocess.run([str(CLUSTER), "down", str(Path(exported["SLURM_CONF"]).parent)], env=env,
                       capture_output=True, text=True, timeout=120)


def job_info(env: dict, job_id: str) -> dict:
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True)
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


def submit(env: dict, *args: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def wait_for(env: dict, job_id: str, timeout: float, log: Path | None = None) -> dict:
    """Poll until the job reaches a final state (a requeued job passes through PENDING again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(env, job_id)
        if info.get("JobState") in FINAL_STATES:
            return info
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], env=env, capture_output=True)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"job {job_id} did not finish within {timeout:.0f} s (state {info.get('JobState')}):\n{tail}")


def wait_for_text(path: Path, pattern: str, timeout: float, env: dict, job_id: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and re.search(pattern, path.read_text()):
            return
        if job_info(env, job_id).get("JobState") in FINAL_STATES:
            break
        time.sleep(0.2)
    pytest.fail(f"{path} never showed {pattern!r} (job {job_id}: {job_info(env, job_id).get('JobState')})")


def test_sigusr1_checkpoints_requeues_and_resumes(slurm, tmp_path):
    """The cpu template runs one MPI world of four across srun's tasks; what --signal=USR1@120 does
    before the time limit, sent by hand: the ranks checkpoint, rank 0 requeues the job, and the same
    job id runs the script again and resumes from its out dir."""
    out, log = tmp_path / "run", tmp_path / "job.out"
    job = submit(slurm, "--ntasks-per-node=4", "--cpus-per-task=1", f"--output={log}", "slurm/cpu.sbatch",
                 "jobs/quickstart.toml", str(out), *sets(*TINY, "global.epochs=8"))
    # mid-run: the global phase has finished its first epoch and has seven to go
    wait_for_text(out / "logs" / "rank0.log", r"\[global\] epoch 1/8", 150, slurm, job)
    # like --signal=USR1@120 (no B:): every task of the job's steps, not the batch shell
    signalled = subprocess.run(["scancel", "--signal=USR1", job], env=slurm, capture_output=True, text=True)
    assert signalled.returncode == 0, signalled.stderr
    info = wait_for(slurm, job, 240, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-3000:]
    assert int(info["Restarts"]) >= 1
    assert re.search(rf"ddc: job {job} restart 0 ", text) and re.search(rf"ddc: job {job} restart 1 ", text)
    assert "stop signal in phase global" in text and f"requeued SLURM job {job}" in text
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 4 and results["partitions"] == 4 and results["strategy"] == "ddc"
    assert results["resumed"] and results["slurm_restarts"] >= 1 and results["global"]["epochs"] == 8
    assert re.search(rf"ddc: job {job} restart 0 on \S+: 4 tasks x 1 cpus, srun --mpi=pmi2", text)
    assert "4 rank(s)" in text and "srun exited 0" in text
    assert sorted(p.name for p in (out / "logs").iterdir()) == [f"rank{r}.log" for r in range(4)]
    assert "resuming" in (out / "logs" / "rank0.log").read_text()
    assert (out / "checkpoints" / "global").is_dir()


def test_scancel_stops_with_a_checkpoint_and_does_not_requeue(slurm, tmp_path):
    """A user's `scancel` (SIGTERM, then SIGKILL after KillWait) must end the job: the ranks may still
    checkpoint, but the job must not come back."""
    out, log = tmp_path / "run", tmp_path / "job.out"
    job = submit(slurm, "--ntasks-per-node=4", "--cpus-per-task=1", f"--output={log}", "slurm/cpu.sbatch",
                 "jobs/quickstart.toml", str(out), *sets(*TINY, "global.epochs=8"))
    wait_for_text(out / "logs" / "rank0.log", r"\[global\] epoch 1/8", 150, slurm, job)
    subprocess.run(["scancel", job], env=slurm, capture_output=True)
    deadline = time.monotonic() + 60
    info = job_info(slurm, job)
    while info.get("JobState") not in FINAL_STATES and info.get("Restarts", "0") == "0" and time.monotonic() < deadline:
        time.sleep(0.5)
        info = job_info(slurm, job)
    try:
        assert info.get("Restarts") == "0" and info.get("JobState") == "CANCELLED", log.read_text()[-2000:]
        assert (out / "checkpoints" / "global").is_dir()  # SIGTERM still checkpoints: resubmitting resumes
    finally:
        for _ in range(60):  # a requeued job is cancelled for good while it is pending again
            if job_info(slurm, job).get("JobState") in FINAL_STATES:
                break
            subprocess.run(["scancel", job], env=slurm, capture_output=True)
            time.sleep(1)


def test_srun_with_the_wrong_mpi_plugin_is_diagnosed(slurm, tmp_path):
    """--mpi=none gives four one-rank worlds instead of one world of four: stop, say so, exit 2."""
    out = tmp_path / "run"
    done = subprocess.run(
        ["srun", "--mpi=none", "--ntasks=4", "--cpus-per-task=1", sys.executable, "-m", "ddc_hpc.run",
         "--out", str(out), *sets(*TINY)],
        env=slurm, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--mpi" in done.stderr and "size 1" in done.stderr and "Traceback" not in done.stderr
    assert not (out / "results.json").exists()


def test_gpu_template_schedules_one_rank_per_gpu(slurm, tmp_path):
    """The node declares 4 pretend GPUs: the GPU template's directives are accepted, srun starts one
    MPI world of nodes x gpus-per-node ranks, and each task sees the node's GPUs (then runs on CPU)."""
    out, log = tmp_path / "run", tmp_path / "job.out"
    job = submit(slurm, "--cpus-per-task=2", f"--output={log}", "slurm/gpu.sbatch", "jobs/quickstart.toml",
                 str(out), *sets(*TINY), "--dry-run")
    info = wait_for(slurm, job, 180, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert "gpu:4" in info.get("TresPerNode", "") + info.get("TRES", "")
    assert re.search(r"4 tasks x 2 cpus", text) and "4 rank(s), 1 thread(s) each" in text


def test_template_without_a_config_exits_2(slurm, tmp_path):
    log = tmp_path / "job.out"
    job = submit(slurm, "--ntasks-per-node=1", "--cpus-per-task=1", f"--output={log}", "slurm/cpu.sbatch",
                 "jobs/no_such_job.toml")
    info = wait_for(slurm, job, 60, log)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0"
    assert "no job config 'jobs/no_such_job.toml'" in log.read_text()


def test_a_slurm_budget_shares_the_jobs_time_left_between_the_strategies(slurm, tmp_path):
    """run.budget = "slurm": the time left of a 5-minute job (squeue %L, asked by rank 0 alone), less
    the templates' 120 s USR1 lead and 60 s for the results, shared by DDC and GNet-R with room for
    10 % overshoot each; a dry run calibrates, prints the plan and writes nothing."""
    out, log = tmp_path / "run", tmp_path / "job.out"
    command = [sys.executable, "-m", "ddc_hpc.run", "--out", str(out), "--dry-run",
               *sets(*TINY, "run.strategy=both", "run.budget=slurm", "sub.schedule=linear", "global.schedule=linear",
                     "random.schedule=linear")]
    job = submit(slurm, "--ntasks=1", "--time=5", f"--output={log}", "--wrap", " ".join(command))
    info = wait_for(slurm, job, 150, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-3000:]
    budgets = [float(s) for s in re.findall(r"budget (?:DDC|GNet-R) (\d+) s: calibration", text)]
    assert len(budgets) == 2 and budgets[0] == budgets[1] and 30 <= budgets[0] <= 55, text[-3000:]  # (300 - 180) / 2.2
    assert not out.exists()


def test_the_step_ends_only_after_a_slow_stop_checkpoint_and_the_requeue(slurm, tmp_path):
    """Issue 21 item 4: under `srun --kill-on-bad-exit=1` the first rank to exit 75 ends the step (SIGKILL
    KillWait = 5 s later: the ranks catch SIGTERM). The other ranks left while rank 0 might still be
    writing a stop checkpoint slower than their wait (DDC_SLOW_WRITE: a large network on a slow parallel
    file system; MPICH's MPI_Finalize happens to hold them here, other MPIs do not) or be in `scontrol
    requeue` (DDC_SLOW_REQUEUE: a busy slurmctld, here longer than KillWait): the requeue was lost. The
    others now leave only after rank 0 has published the checkpoint and requeued. Their wait is 60 s;
    DDC_LEAVE_SECONDS makes it 15 s here, so that a 20 s write outlasts it."""
    out, log = tmp_path / "run", tmp_path / "job.out"
    env = dict(slurm, DDC_STOP_AT="random:1:2", DDC_SLOW_WRITE="0:20", DDC_SLOW_REQUEUE="8", DDC_LEAVE_SECONDS="15")
    job = submit(env, "--ntasks-per-node=2", "--cpus-per-task=1", f"--output={log}", "slurm/cpu.sbatch",
                 "jobs/quickstart.toml", str(out),
                 *sets(*TINY, "run.strategy=random", "random.epochs=1", "random.batch_size=32"))
    try:
        deadline = time.monotonic() + 300
        info = job_info(slurm, job)
        while (info.get("Restarts", "0") == "0" and info.get("JobState") not in FINAL_STATES
               and time.monotonic() < deadline):
            time.sleep(1)
            info = job_info(slurm, job)
        text = log.read_text() if log.exists() else ""
        assert info.get("Restarts") not in (None, "0"), f"{info.get('JobState')}: {text[-3000:]}"
        assert f"requeued SLURM job {job}" in text, text[-3000:]
        manifest = json.loads((out / "checkpoints" / "random" / "manifest.json").read_text())
        assert [(e["epoch"], e["step"]) for e in manifest["checkpoints"]] == [(0, 2)]  # the stop checkpoint
    finally:
        for _ in range(120):  # the requeued job is not wanted: cancel it, pending or running again
            if job_info(slurm, job).get("JobState") in FINAL_STATES:
                break
            subprocess.run(["scancel", job], env=slurm, capture_output=True)
            time.sleep(1)


def test_the_studies_are_submitted_a_point_requeued_and_collected(slurm, tmp_path):
    """Issue 32 item 2, the two studies of ddc_hpc.study side by side on the cluster: a scaling study
    (one node count) and `python -m ddc_hpc.frontier submit` of a 2-point frontier (two budgets, one
    seed; DDC alone on one rank: the smallest budgeted job), each one job per point (the frontier's
    as a job array) and a collect job after them. One frontier point is stopped mid-run as before its
    time limit (SIGUSR1 to that array task): it checkpoints, requeues itself and resumes with its
    recorded plan; the collect job waits for it, scores both points and writes the frontier's table
    and figure."""
    scaling = tmp_path / "scaling"
    done = subprocess.run(
        [sys.executable, "-m", "ddc_hpc.scaling", "submit", "--nodes", "1", "--template", "slurm/cpu.sbatch",
         "--config", "jobs/quickstart.toml", "--out", str(scaling), "--sbatch-arg=--ntasks-per-node=2",
         "--sbatch-arg=--cpus-per-task=1", *sets(*TINY)],
        env=slurm, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((scaling / "scaling.json").read_text())
    scaling_run, scaling_collect = manifest["runs"][0]["job_id"], manifest["collect_job_id"]
    assert job_info(slurm, scaling_collect).get("Dependency", "").startswith(f"afterany:{scaling_run}")
    study = tmp_path / "frontier"
    done = subprocess.run(
        [sys.executable, "-m", "ddc_hpc.frontier", "submit", "--budgets", "20", "25", "--seeds", "0", "--config",
         "jobs/quickstart.toml", "--template", "slurm/cpu.sbatch", "--out", str(study),
         "--sbatch-arg=--ntasks-per-node=1", "--sbatch-arg=--cpus-per-task=1",
         *sets(*TINY, "sub.schedule=linear", "global.schedule=linear", "data.val_limit=100")],
        env=slurm, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((study / "frontier.json").read_text())
    (untouched, _), (stopped, stopped_id) = [(r["dir"], r["job_id"]) for r in manifest["runs"]]
    array_id = stopped_id.split("_")[0]
    assert job_info(slurm, manifest["collect_job_id"]).get("Dependency", "").startswith(f"afterany:{array_id}")
    # composed: the signal lands in the global phase, whatever number of epochs the plan gave it
    wait_for_text(study / stopped / "logs" / "rank0.log", r"\[compose\] Theorem 2.1", 300, slurm, stopped_id)
    signalled = subprocess.run(["scancel", "--signal=USR1", stopped_id], env=slurm, capture_output=True, text=True)
    assert signalled.returncode == 0, signalled.stderr
    info = wait_for(slurm, manifest["collect_job_id"], 400)
    logs = "".join(p.read_text() for p in sorted(study.glob("*.out")))
    assert info["JobState"] == "COMPLETED", logs[-4000:]
    assert int(job_info(slurm, stopped_id).get("Restarts", 0)) >= 1, logs[-4000:]
    resumed = json.loads((study / stopped / "results.json").read_text())
    assert resumed["resumed"] and resumed["slurm_restarts"] >= 1 and resumed["budget"]["budget_seconds"]["ddc"] == 25
    assert not json.loads((study / untouched / "results.json").read_text())["resumed"]  # its array task ran on
    assert f"requeued SLURM job {stopped_id};" in logs and "stop signal in phase global" in logs
    assert re.search(r"\| 20 \| [\d.]+ \|", logs) and "| 25 |" in logs
    for point in (untouched, stopped):
        scores = json.loads((study / point / "scores.json").read_text())
        assert set(scores) == {"ddc", "composed"} and 0 <= scores["ddc"]["val"] <= 1
    assert (study / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    info = wait_for(slurm, scaling_collect, 240)
    collect_logs = "".join(p.read_text() for p in scaling.glob("collect-*.out"))
    assert info["JobState"] == "COMPLETED", collect_logs + "".join(p.read_text() for p in scaling.glob("n1/slurm-*"))
    with open(scaling / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["scaling"], r["unit"], r["nodes"], r["ranks"]) for r in rows] == [("strong", "ranks", "1", "2")]
    assert (scaling / "scaling_speedup.png").exists() and (scaling / "n1" / "results.json").exists()
