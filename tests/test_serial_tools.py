"""The one-process tools (evaluate, info, visualize, report, data, scaling, frontier) never import mpi4py:
importing mpi4py.MPI runs MPI_Init, which a login node or a notebook may refuse or hang on."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, job

SERIAL = ["evaluate", "info", "visualize", "report", "data.__main__", "scaling", "study", "frontier"]


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`python -m ...` with an mpi4py that fails to import: any import of it shows as exit 1."""
    blocker = tmp_path / "blocker" / "mpi4py"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text("raise ImportError('a serial tool imported mpi4py')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DDC_", "SLURM_"))}
    env.update(PYTHONPATH=f"{blocker.parent}{os.pathsep}{REPO}", OMP_NUM_THREADS="1")
    return job([sys.executable, *args], env=env, timeout=600)


def test_importing_the_serial_tools_leaves_mpi4py_unimported(tmp_path):
    imports = "; ".join(f"import ddc_hpc.{m}" for m in SERIAL)
    done = _run(tmp_path, "-c", f"import sys; {imports}; assert 'mpi4py' not in sys.modules, sorted(sys.modules)")
    assert done.returncode == 0, done.stderr


def test_serial_clis_run_without_mpi4py(tiny_run, tmp_path):
    out, _ = tiny_run
    evaluated = _run(tmp_path, "-m", "ddc_hpc.evaluate", "--checkpoint", str(out / "model.pt"), "--run", str(out),
                     "--json")
    assert evaluated.returncode == 0 and '"top1"' in evaluated.stdout, evaluated.stderr
    reported = _run(tmp_path, "-m", "ddc_hpc.report", str(out), "--out", str(tmp_path / "report"))
    assert reported.returncode == 0 and (tmp_path / "report" / "report.md").is_file(), reported.stderr
    drawn = _run(tmp_path, "-m", "ddc_hpc.visualize", "--run", str(out), "--images", "1", "--layers", "1",
                 "--out", str(tmp_path / "vis"))
    assert drawn.returncode == 0 and (tmp_path / "vis" / "visualize.json").is_file(), drawn.stderr
    sized = _run(tmp_path, "-m", "ddc_hpc.info", "--model", "cnn1d", "--partitions", "2", "--json")
    assert sized.returncode == 0, sized.stderr


def test_serial_guard_exits_2_with_one_line_and_no_mpi(tmp_path):
    """Bad input to a serial tool: exit 2 and an `error:` line, as under comm.run_guarded, without MPI."""
    missing = str(tmp_path / "missing.pt")
    for args in (["ddc_hpc.evaluate", "--checkpoint", missing, "--data", "synthetic"],
                 ["ddc_hpc.data", "info", str(tmp_path / "missing.h5")],
                 ["ddc_hpc.report", str(tmp_path / "no-run")]):
        done = _run(tmp_path, "-m", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr, (args, done.stderr)
