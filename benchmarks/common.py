"""Helpers shared by the issue-7 benchmarks: launching, the machine's description, RESULTS.md."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_NPZ = REPO.parent / "shared" / "data" / "cifar10-train.npz"
# as the launched workers (cwd = REPO) and the recorded results name it: no machine's absolute path
SHARED_SOURCE = f"npz:{os.path.relpath(SHARED_NPZ, REPO)}"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BIN = Path(sys.executable).parent  # the venv's bin: mpiexec and torchrun live beside python


def tool(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else (shutil.which(name) or name)


def env(threads_from_launcher: bool = False) -> dict:
    """The environment for launched workers: the repo importable; no OMP_NUM_THREADS unless asked,
    so the workers' thread counts are exactly what they set themselves."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("DDC_", "SLURM_", "OMP_NUM_THREADS"))}
    out["PYTHONPATH"] = str(REPO)
    return out


def run(command: list[str], timeout: float = 3600, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=REPO, env={**env(), **(extra_env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def mpi(ranks: int, script: str, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    # -X faulthandler: a rank that dies of a signal (SIGABRT, SIGSEGV) prints its Python stack
    return run([tool("mpiexec"), "-n", str(ranks), sys.executable, "-X", "faulthandler", script, *args], timeout=timeout)


def run_worker(script: str, name: str, ranks: int, args: list[str], timeout: float = 3600) -> dict:
    """`script --worker --json FILE args` on `ranks` MPI ranks: the JSON its rank 0 wrote, also kept
    as benchmarks/last_<name>.json (the numbers behind the last table)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        mpi(ranks, script, "--worker", "--json", str(out), *args, timeout=timeout)
        res = json.loads(out.read_text())
    (REPO / "benchmarks" / f"last_{name}.json").write_text(json.dumps(res, indent=1))
    return res


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = re.search(r"Model name:\s*(.+)", out).group(1).strip()
        cores = re.search(r"^CPU\(s\):\s*(\d+)", out, re.M).group(1)
        flags = re.search(r"Flags:\s*(.+)", out)
        isa = "AVX-512" if flags and "avx512f" in flags.group(1) else "AVX2"
        return f"{name}, {cores} CPUs ({isa})"
    except Exception:  # noqa: BLE001
        return platform.processor() or "unknown CPU"


def load() -> str:
    """The load averages (1, 5, 15 min): the machine is shared, so every section says them."""
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> str:
    import torch

    return f"{cpu_model()}, torch {torch.__version__}, {datetime.date.today().isoformat()}"


def median(values) -> float:
    return float(statistics.median(values))


def time_steps(step, steps: int, world) -> float:
    """Seconds per training step: `step(0)` warms up (oneDNN primitives, allocations), then `steps`
    steps run between two barriers, so the slowest rank counts."""
    import time

    from ddc_hpc import comm

    step(0)
    comm.barrier(world)
    tic = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    comm.barrier(world)
    return (time.perf_counter() - tic) / steps


def record(heading: str, body: list[str]) -> None:
    """Put (or replace) the section `heading` in benchmarks/RESULTS.md, leaving the others."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = "\n".join([heading, "", *body, ""])
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)
    print(f"recorded in {RESULTS}")
