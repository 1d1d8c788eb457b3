"""./dev and the suite's report (issue 23): its usage, which stage runs a test, the one report over
the stages, and a failing test that shows the stderr of the job it launched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import stages
from conftest import REPO

SUITE = '''
import pytest
from conftest import launch

def test_a_launched_job_fails():
    done = launch(1, "json.tool", "/nonexistent/input.json")
    assert done.returncode == 0

@pytest.mark.ranks(2)
def test_for_two_ranks():
    pass

@pytest.mark.mpi(min_size=2)
def test_for_two_ranks_or_more():
    pass

def test_serial():
    pass
'''


def test_help_exits_0_and_gives_the_stages_in_the_order_they_run():
    done = subprocess.run([str(REPO / "dev"), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.index("mpiexec at 2, then 4 ranks") < done.stdout.index("then serial"), done.stdout
    assert "--quick" in done.stdout
    wrong = subprocess.run([str(REPO / "dev"), "tset"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "./dev test" in wrong.stderr


def test_a_failing_launched_test_shows_its_jobs_stderr_and_other_stages_tests_are_not_skips(tmp_path):
    (tmp_path / "test_suite.py").write_text(SUITE)
    log = tmp_path / "stages.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rs",
                           "--with-mpi", f"--stage-log={log}", str(tmp_path / "test_suite.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    report = done.stdout
    assert "job exited 2: " in report and "json.tool /nonexistent/input.json" in report, report
    assert "No such file or directory" in report, report  # the job's own stderr
    assert "1 failed, 1 passed, 2 deselected in" in report and "skipped" not in report, report
    assert "MPI Information" not in report  # ./dev test prints it once, after every stage
    record = json.loads(log.read_text())
    assert record["stage"] == "serial (1 rank + launched jobs)" and record["counts"]["failed"] == 1
    assert record["counts"]["deselected"] == 2 and "MPI" in record["mpi"]
    assert {(d[0].split("::")[1], d[1]) for d in record["durations"]} >= {("test_a_launched_job_fails", "call")}


def test_a_test_runs_in_the_stage_of_its_world_size_only():
    for size in (1, 2, 4):
        assert stages.runs_here(size, None, 1, quick=False, runs_jobs=False, marked_quick=False)
        assert stages.runs_here(size, (2, 4), 1, quick=False, runs_jobs=False, marked_quick=False) == (size > 1)
        assert stages.runs_here(size, None, 2, quick=False, runs_jobs=False, marked_quick=False) == (size > 1)
    assert not stages.runs_here(4, (1, 2), 1, quick=False, runs_jobs=False, marked_quick=False)


def test_the_quick_tier_keeps_what_runs_no_job_and_the_tests_marked_quick():
    assert stages.runs_here(1, None, 1, quick=True, runs_jobs=False, marked_quick=False)
    assert not stages.runs_here(1, None, 1, quick=True, runs_jobs=True, marked_quick=False)
    assert not stages.runs_here(2, (2,), 1, quick=True, runs_jobs=False, marked_quick=False)
    assert stages.runs_here(2, (1, 2, 4), 1, quick=True, runs_jobs=True, marked_quick=True)
    assert not stages.runs_here(1, (2,), 1, quick=True, runs_jobs=True, marked_quick=True)


def test_one_report_over_the_stages_with_one_mpi_block_and_one_durations_table():
    mpi = "MPI 5.0, MPICH 5.0.2, mpi4py 4.1.2\nMPICH Version: 5.0.2"
    records = [stages.stage_record(2, False, {"passed": 30}, [("t.py::a", "call", 3.0, "passed"),
                                                              ("t.py::b", "setup", 0.001, "passed")], mpi),
               stages.stage_record(4, False, {"passed": 20}, [("t.py::a", "call", 5.0, "passed")], mpi),
               stages.stage_record(1, False, {"passed": 600, "failed": 1, "deselected": 50},
                                   [("t.py::c", "call", 4.0, "failed")], mpi)]
    text = stages.report(records, durations=2)
    assert text.count("MPICH Version: 5.0.2") == 1
    lines = text.splitlines()
    assert [line.split()[:3] for line in lines if line.startswith("  mpiexec") or line.startswith("  serial")] == [
        ["mpiexec", "-n", "2"], ["mpiexec", "-n", "4"], ["serial", "(1", "rank"]]
    assert "600 passed, 1 failed, 50 deselected" in text and "ran in the mpiexec stages" in text
    table = lines[lines.index("slowest 2 test phases over every stage:") + 1:]
    assert [row.split()[-1] for row in table] == ["t.py::a", "t.py::c"] and "mpiexec -n 4" in table[0]
    assert "slowest" not in stages.report(records, durations=None)


def test_a_jobs_section_is_the_tail_of_its_stderr():
    title, tail = stages.job_section(["python", "-m", "x"], 1, "".join(f"line {i}\n" for i in range(100)))
    assert title == "job exited 1: python -m x"
    assert tail.splitlines() == [f"line {i}" for i in range(100 - stages.TAIL_LINES, 100)]
