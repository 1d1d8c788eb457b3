"""Shared helpers, and how the suite is laid out so that it stays fast.

`./dev test` runs three pytest sessions ("stages"): under `mpiexec -n 2` and `mpiexec -n 4`
(`--with-mpi -m mpi`: every rank is a pytest process and runs every test), then one serial process
(a world of 1 rank). Each process pays ~5 s of CPU to import torch, once per stage; each launched
job pays it again for every rank. So:

- A test that needs a whole job, but no abort, no signal from outside, no hang and no process of
  its own, runs the job IN-PROCESS: `run_pipeline_here(out, ...)` / `inprocess(...)` (ddc_hpc.run's
  run_here on this stage's MPI world; they return what `launch` returns). It names the world sizes
  it runs at with `@pytest.mark.ranks(2, 4)`, or `@each_world(1, 2, 4)` for one case per size, and
  runs in those stages only (1 = the serial stage); elsewhere it is deselected, not skipped. Every
  rank runs the test: give the job a directory all ranks share (`mpi_tmp_path`; `shared_tmp` in a
  fixture) and make the same in-process calls on every rank.
- Tests that read a job's outputs share one job: `tiny_run` (the TINY job at this stage's world
  size) or a session/module fixture of their own; a bitwise comparison has one reference run.
- A test LAUNCHES (`launch`, `run_pipeline`, `job`) only what must be its own job: failures that
  abort, signals from outside, hangs, MPMD launches, SLURM, multi-node, and the serial tools' own
  process. These run in the serial stage. A failing test shows the stderr tail of its jobs.
- `./dev test --quick` keeps what launches and trains nothing, plus the tests marked `quick` (one
  end-to-end run at 2 ranks): `launch`, `inprocess` and `tiny_run` skip any other test.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

import stages

REPO = Path(__file__).resolve().parents[1]

# A job small enough for a 2-core machine: narrow net, few images, one epoch per phase.
TINY = [
    "model.width=8", "data.limit=192", "sub.epochs=1", "global.epochs=1",
    "sub.batch_size=32", "global.batch_size=32", "random.batch_size=32", "run.threads=1",
]

_session: dict = {"config": None, "item": None, "jobs": []}  # this process's pytest config, running test, its jobs


def mpiexec() -> str:
    """The mpiexec beside this Python first (a venv's own MPICH, found without activating the venv),
    else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec") or "mpiexec"


def each_world(*sizes: int):
    """Parametrise over `ranks`, one case per world size, each run in the stage of its size."""
    return pytest.mark.parametrize("ranks", [pytest.param(n, marks=pytest.mark.ranks(n)) for n in sizes])


def world_size(config) -> int:
    """Ranks in this stage's MPI world (1 without --with-mpi: no MPI is started for collection)."""
    if not config.getoption("--with-mpi"):
        return 1
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size()


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true",
                     help="the quick tier (./dev test --quick): tests that launch or train nothing, and those marked quick")
    parser.addoption("--stage-log", metavar="FILE",
                     help="append this stage's outcomes and durations to FILE (./dev test's one report; rank 0)")


def pytest_configure(config):
    _session["config"] = config
    config.addinivalue_line("markers", "ranks(*sizes): runs in-process in the stages whose MPI world has one of these sizes")
    config.addinivalue_line("markers", "quick: kept by ./dev test --quick although it runs a job")


def _runs_jobs(item) -> bool:
    """Known before it runs: the test runs jobs (the quick tier leaves it out). Others that launch
    are skipped when they do (launch, inprocess)."""
    return "tiny_run" in item.fixturenames or any(next(item.iter_markers(m), None) for m in ("slurm", "multinode", "slow"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep the tests that run at this stage's world size (before pytest-mpi and -m see them): a
    test for other sizes runs in their stage, so it is deselected here rather than reported as a skip."""
    size, quick = world_size(config), config.getoption("--quick")
    kept, elsewhere = [], []
    for item in items:
        marked = item.get_closest_marker("ranks")
        mpi = item.get_closest_marker("mpi")
        if not stages.runs_here(size, marked.args if marked else None, (mpi.kwargs.get("min_size") if mpi else None) or 1,
                                quick, _runs_jobs(item), item.get_closest_marker("quick") is not None):
            elsewhere.append(item)
            continue
        if marked and size > 1:
            item.add_marker(pytest.mark.mpi)  # selected by the mpiexec stages' -m mpi
        kept.append(item)
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _session["item"], _session["jobs"] = item, []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test shows the end of the stderr of the jobs it ran (launched or in-process): those
    that failed, else the last one."""
    report = yield
    if report.failed:
        jobs = _session["jobs"]
        for done in ([j for j in jobs if j.returncode != 0] or jobs)[-3:]:
            report.sections.append(stages.job_section(done.args, done.returncode, done.stderr or done.stdout))
    return report


def _is_root() -> bool:
    return "mpi4py.MPI" not in sys.modules or sys.modules["mpi4py.MPI"].COMM_WORLD.Get_rank() == 0


def pytest_runtest_logreport(report):
    if _session["config"].getoption("--stage-log") and _is_root():
        _session.setdefault("reports", []).append((report.nodeid, report.when, report.duration, report.outcome))


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """pytest-mpi prints its "MPI Information" block on every rank, interleaved under mpiexec:
    rank 0's is enough, and under ./dev test (--stage-log) the stage log carries it to the one report."""
    for plugin in config.pluginmanager.get_plugins():
        if type(plugin).__name__ == "MPIPlugin" and plugin._is_testing_mpi:
            plugin._is_testing_mpi = _is_root() and not config.getoption("--stage-log")
    log = config.getoption("--stage-log")
    if log and _is_root():
        counts = {k: len(v) for k, v in terminalreporter.stats.items() if k in stages.OUTCOMES}
        record = stages.stage_record(world_size(config), config.getoption("--quick"), counts,
                                     _session.get("reports", []), stages.mpi_information())
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An sbatch stand-in on PATH: records each command line, answers with job ids 101, 102, ..."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    script = bin_dir / "sbatch"
    script.write_text(f"""#!{sys.executable}
import json, sys
log = {str(log)!r}
calls = open(log).read().splitlines() if __import__('os').path.exists(log) else []
open(log, 'a').write(json.dumps(sys.argv[1:]) + '\\n')
print(f"{{101 + len(calls)}};ddc")
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _quick_guard(what: str) -> None:
    item = _session["item"]
    if _session["config"].getoption("--quick") and not (item and item.get_closest_marker("quick")):
        pytest.skip(f"quick tier: {what}; the full ./dev test runs it")


def job(command: list[str], env: dict | None = None, cwd: Path = REPO, timeout: float = 240) -> subprocess.CompletedProcess:
    """Launch `command` as its own job; its stderr tail is shown if the test fails."""
    _quick_guard("launches a job")
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    _session["jobs"].append(done)
    return done


def launch(ranks: int, module: str, *args: str, env: dict | None = None, timeout: float = 240,
           use_mpiexec: bool | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` on `ranks` MPI ranks (plain python for one rank by default)."""
    command = [sys.executable, "-m", module, *args]
    if use_mpiexec or (use_mpiexec is None and ranks > 1):
        command = [mpiexec(), "-n", str(ranks), *command]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DDC_FAULT", "SLURM_"))}
    full_env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    return job(command, env=full_env, timeout=timeout)


def run_pipeline(ranks: int, out: Path, *overrides: str, env=None, timeout: float = 240, extra=()):
    return launch(ranks, "ddc_hpc.run", "--out", str(out), *sets(*TINY, *overrides), *extra,
                  env=env, timeout=timeout)


def inprocess(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m ddc_hpc.run args` on this stage's MPI world in this process (every rank calls it):
    what `launch` would give, stdout and stderr of all ranks in rank order. A rank that fails alone
    ends the stage, as it would end a launched job: the other ranks wait for it in a collective."""
    _quick_guard("runs a job")
    from mpi4py import MPI

    from ddc_hpc import comm
    from ddc_hpc.run import run_here

    saved = dict(os.environ)
    for name in [k for k in os.environ if k.startswith(("DDC_FAULT", "SLURM_"))]:
        del os.environ[name]  # as in launch's jobs
    os.environ.update(env or {})
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            code = run_here(list(args))
    except comm.RankFailed as failed:
        capture = _session["config"].pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(f"\n== rank {MPI.COMM_WORLD.Get_rank()}: in-process job {' '.join(args)} failed on this rank alone; "
                  f"ending the stage as it would end the job ==\n{stdout.getvalue()}{stderr.getvalue()}",
                  file=sys.stderr, flush=True)
            comm.abort(failed.code)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    outputs = MPI.COMM_WORLD.allgather((stdout.getvalue(), stderr.getvalue()))
    done = subprocess.CompletedProcess(["(in-process) ddc_hpc.run", *args], code, "".join(o for o, _ in outputs),
                                       "".join(e for _, e in outputs))
    _session["jobs"].append(done)
    return done


def run_pipeline_here(out: Path, *overrides: str, env=None, extra=()) -> subprocess.CompletedProcess:
    """run_pipeline's job (TINY and `overrides`) on this stage's world, in-process."""
    return inprocess("--out", str(out), *sets(*TINY, *overrides), *extra, env=env)


def cli(main, *args: str) -> subprocess.CompletedProcess:
    """A serial tool's `main(args)` in this process, as `launch` would report it (exit code, stdout,
    stderr); test_serial_tools launches each for real, without mpi4py."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            returned = main(list(args))
            code = returned if isinstance(returned, int) else 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (exit.code is not None)
    done = subprocess.CompletedProcess([main.__module__, *args], code, stdout.getvalue(), stderr.getvalue())
    _session["jobs"].append(done)
    return done


def shared_tmp(tmp_path_factory, name: str) -> Path:
    """A new directory under the same path on every rank of this stage (rank 0 makes it)."""
    from mpi4py import MPI

    path = str(tmp_path_factory.mktemp(name)) if MPI.COMM_WORLD.Get_rank() == 0 else None
    return Path(MPI.COMM_WORLD.bcast(path))


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def assert_seconds_cover_the_recorded_pieces(result: dict) -> None:
    """After a stop and resume each phase's seconds still count every process that ran it: at least
    its epochs' recorded seconds (a resumed epoch's row carries its earlier part), not only what the
    last process spent (a sub phase loaded from checkpoints took that one a fraction of a second)."""
    for k, history in enumerate(result.get("sub", {}).get("histories", [])):
        assert result["sub"]["seconds"] >= sum(row["seconds"] for row in history) > 0, k
    for phase in ("global", "random"):
        if phase in result:
            assert result[phase]["seconds"] >= sum(row["seconds"] for row in result[phase]["history"]) > 0, phase


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished TINY run (strategy both) at this stage's world size, shared by tests that only
    read its outputs: (out dir, what the job printed)."""
    out = shared_tmp(tmp_path_factory, "tiny") / "run"
    done = run_pipeline_here(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


@pytest.fixture
def one_thread():
    """In-process forward passes on one thread: on a busy 2-core machine, with tiny convolutions,
    a second thread only spins (10x the CPU time)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unavailable(required_by: str, reason: str):
    """Skip a test whose facility this machine lacks; fail instead where `required_by` (an env var
    such as DDC_REQUIRE_SLURM that CI sets) is 1, so a silent skip cannot pass for a green run."""
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but {reason}", pytrace=False)
    pytest.skip(reason)
