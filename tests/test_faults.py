"""Fault matrix: any failure on any rank ends the whole job quickly, names the rank, loses nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, job, mpiexec, run_pipeline, run_pipeline_here

PHASES = ["sub", "compose", "global", "random"]
# Events, not wall time (2 loaded cores make any seconds meaningless): a failed job must end by
# itself, told by the failing rank (MPI Abort), long before its collectives' own deadline could end
# it; the launch's limit sits between the two, so a job that hangs until the deadline fails the test.
NO_DEADLINE = "run.collective_timeout=900"
LAUNCH_LIMIT = 600


def _ended_cleanly(done, out, rank: int, expect: str) -> None:
    assert done.returncode not in (0, 2), done.stderr[-2000:]
    assert f"rank {rank}" in done.stderr and expect in done.stderr, done.stderr[-2000:]
    assert not (out / "results.json").exists()


def _reach(phase: str) -> tuple[str, ...]:
    """The strategy that reaches `phase` soonest: GNet-R's phase runs alone, without DDC's before it."""
    return ("run.strategy=random",) if phase == "random" else ()


# Every phase with the failing rank the root and not, at 4 ranks; at 2 ranks the non-root in a
# phase without and one with torch.distributed (each launch costs ~5 s of CPU per rank to import torch).
@pytest.mark.parametrize("phase, role, ranks", [(phase, role, 4) for phase in PHASES for role in ("root", "non-root")]
                         + [("sub", "non-root", 2), ("global", "non-root", 2)])
def test_an_error_on_any_rank_in_any_phase_ends_the_job(phase, role, ranks, tmp_path):
    rank = 0 if role == "root" else ranks - 1
    out = tmp_path / "run"
    done = run_pipeline(ranks, out, NO_DEADLINE, *_reach(phase), env={"DDC_FAULT": f"{phase}:{rank}"},
                        timeout=LAUNCH_LIMIT)
    _ended_cleanly(done, out, rank, "injected fault")
    assert f"phase {phase!r}" in done.stderr


def test_a_failing_rank_waits_until_the_launcher_has_read_its_last_words():
    """MPI Abort lets the launcher kill the job at once; what the failing rank wrote but the launcher
    had not read yet (its rank and cause) was lost in 6 of 200 aborts. The wait ends on the event
    (pipe read empty), not after a fixed sleep; a file or terminal loses nothing and is not waited for."""
    from ddc_hpc.comm.lifecycle import wait_for_launcher_to_read

    read_end, write_end = os.pipe()
    os.write(write_end, b"rank 3: RuntimeError in phase 'global': injected fault\n")
    got = []
    launcher = threading.Timer(0.3, lambda: got.append(os.read(read_end, 4096)))
    started = time.monotonic()
    launcher.start()
    wait_for_launcher_to_read(fds=(write_end,), limit=60)
    waited = time.monotonic() - started  # a lower bound only: load can make it longer, never shorter
    launcher.join(60)
    assert waited >= 0.25 and b"rank 3" in got[0]  # returned once the reader had taken everything
    os.write(write_end, b"nobody reads this")
    wait_for_launcher_to_read(fds=(write_end,), limit=0.05)  # and never waits past its limit
    os.close(read_end), os.close(write_end)


@pytest.mark.parametrize("job, rank", [("sub_1", 1), ("global", 3), ("random", 0)])
def test_a_rank_killed_mid_phase_ends_the_job(job, rank, tmp_path):
    out = tmp_path / "run"
    done = run_pipeline(4, out, NO_DEADLINE, *_reach(job), env={"DDC_KILL_AT": f"{job}:1:1:{rank}"},
                        timeout=LAUNCH_LIMIT)
    assert done.returncode != 0 and not (out / "results.json").exists()
    # A SIGKILLed rank cannot speak for itself: the launcher reports it (srun: "task N: Killed";
    # MPICH's mpiexec: "BAD TERMINATION ... PID", not always the culprit's), and every rank's log
    # records its PID. The SLURM tests check srun's naming of the task.
    # In the data-parallel phases the survivors usually notice first (gloo: connection closed)
    # and end the job themselves, naming their own rank and the phase.
    report = done.stdout + done.stderr
    assert re.search(r"BAD TERMINATION.*\n.*PID \d+", report) or re.search(rf"rank \d: \w+ in phase '{job[:3]}", report)
    assert f"rank {rank} of 4: pid " in (out / "logs" / f"rank{rank}.log").read_text()


def test_a_hung_rank_is_caught_by_the_arrival_deadline(tmp_path):
    """Rank 1 hangs before it arrives in compose: rank 0 waits run.collective_timeout plus twice the
    sub-phase work it measured (no wall-clock bound here: that work is slow under load)."""
    out = tmp_path / "run"
    # The deadline's own message is the event; the launch limit only catches a job that never ends.
    done = run_pipeline(2, out, "run.collective_timeout=4", env={"DDC_FAULT": "compose:1:hang"}, timeout=LAUNCH_LIMIT)
    _ended_cleanly(done, out, 0, "CollectiveTimeout in phase 'compose': rank(s) [1] did not finish the sub phase")
    assert "run.collective_timeout 4 s + 2 x 2 sub epochs" in done.stderr


def test_nan_loss_stops_the_phase_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ("run.strategy=ddc", "global.epochs=2")
    done = run_pipeline(2, out, *args, env={"DDC_NAN_AT": "global:2:1"}, timeout=LAUNCH_LIMIT)
    assert done.returncode == 1
    assert "phase global, epoch 2, step 1, rank" in done.stderr and "loss is nan" in done.stderr
    manifest = json.loads((out / "checkpoints" / "global" / "manifest.json").read_text())
    assert manifest["checkpoints"][-1]["epoch"] == 1  # the good epoch-1 checkpoint survives
    resumed = run_pipeline(2, out, *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


@pytest.fixture
def small_disk(tmp_path):
    """A real 32 MiB file system (tmpfs) to fill up; needs root, as CI and this machine have."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk, leave: int):
    """Take all free space on the disk but `leave` bytes."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * max(free - leave, 0))


@pytest.mark.ranks(1)  # one rank: an error ends the job without anyone waiting for it, so in-process
def test_a_full_disk_leaves_the_previous_checkpoint_and_results_intact(small_disk):
    out = small_disk / "run"
    args = ("run.strategy=random", "random.epochs=2")
    assert run_pipeline_here(out, *args, env={"DDC_STOP_AT": "random:2:1"}).returncode == 75
    slot = out / "checkpoints" / "random"
    before = (slot / "manifest.json").read_text()
    _fill(small_disk, leave=(slot / "ckpt-000000.pt").stat().st_size // 2)  # no room for a whole one
    failed = run_pipeline_here(out, *args)
    assert failed.returncode == 1 and "No space left on device" in failed.stderr, failed.stderr[-2000:]
    assert (slot / "manifest.json").read_text() == before
    assert not [p for p in slot.iterdir() if ".tmp" in p.name], "no half-written file left behind"
    (small_disk / "filler").unlink()
    assert run_pipeline_here(out, *args).returncode == 0
    result = (out / "results.json").read_text()
    _fill(small_disk, leave=0)
    again = run_pipeline_here(out, *args)  # finished already: writes nothing, so a full disk does not matter
    assert again.returncode == 0 and "finished earlier" in again.stdout, again.stderr[-2000:]
    assert (out / "results.json").read_text() == result  # the earlier finished result is intact


def test_ranks_with_different_configs_are_stopped(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("[sub]\nepochs = 1\n")
    b.write_text("[sub]\nepochs = 2\n")
    command = [mpiexec(), "-n", "1", sys.executable, "-m", "ddc_hpc.run", "--config", str(a), "--out",
               str(tmp_path / "run"), ":", "-n", "1", sys.executable, "-m", "ddc_hpc.run", "--config", str(b),
               "--out", str(tmp_path / "run")]
    done = job(command, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=LAUNCH_LIMIT)
    assert done.returncode == 2 and "ranks disagree" in done.stderr


def test_ranks_running_different_code_are_stopped(tmp_path):
    copy = tmp_path / "other"
    shutil.copytree(REPO / "ddc_hpc", copy / "ddc_hpc", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "ddc_hpc" / "train.py").write_text((copy / "ddc_hpc" / "train.py").read_text() + "\n# edited\n")
    run = [sys.executable, "-m", "ddc_hpc.run", "--out", str(tmp_path / "run"), "--dry-run"]
    command = [mpiexec(), "-n", "1", "-env", "PYTHONPATH", str(REPO), *run, ":",
               "-n", "1", "-env", "PYTHONPATH", str(copy), *run]
    done = job(command, cwd=tmp_path, timeout=LAUNCH_LIMIT)
    assert done.returncode == 2 and "code version" in done.stderr, done.stderr[-2000:]


def test_a_rank_hung_mid_sub_phase_is_named_by_the_others(tmp_path):
    """Rank 1 stops making progress after one step: the wait for it is bounded by the work it has."""
    out = tmp_path / "run"
    done = run_pipeline(2, out, "run.collective_timeout=4", "run.strategy=ddc",
                        env={"DDC_HANG_AT": "sub_1:1:1:1"}, timeout=LAUNCH_LIMIT)
    _ended_cleanly(done, out, 0, "CollectiveTimeout in phase 'compose': rank(s) [1] did not finish the sub phase")


def test_unequal_sub_phase_work_is_waited_for_beyond_the_collective_deadline(tmp_path):
    """3 ranks, K = 4: rank 0 trains two sub-networks, the others one; the others wait for it
    longer than run.collective_timeout, as long as its work takes."""
    out = tmp_path / "run"
    done = run_pipeline(3, out, "run.collective_timeout=5", "run.strategy=ddc", "sub.epochs=24",
                        timeout=LAUNCH_LIMIT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "results.json").exists()
