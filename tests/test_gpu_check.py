"""tools/gpu_check.sh (issue 12, item 9). No GPU here: its CPU-safe parts run (--cpu-smoke, one check
within a zero time budget, the rest reported as skipped), and its GPU mode must refuse to report
anything without CUDA. The full GPU run is for a machine with a GPU (docs/CLUSTER.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, job

SCRIPT = REPO / "tools" / "gpu_check.sh"
FAMILIES = ("resnet18", "cnn11", "vgg11", "cnn3d", "resnet3d", "cnn1d", "mlp", "gru")  # the script's order
NEW_CHECKS = ("theorem", "budget", "resume", "fused")  # issue 29: between the families and the 2-rank checks


def _run(out: Path, *args: str, budget: str = "420", timeout: float = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DDC_", "SLURM_", "OUT"))}
    env.update(DDC_PYTHON=sys.executable, DDC_CHECK_BUDGET=budget, DDC_CHECK_DEADLINE="400", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    return job([str(SCRIPT), *args, "--out", str(out)], env=env, timeout=timeout)


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_help_lists_every_check():
    """Issue 29 item 4: --help names every check a GPU machine runs (one line of stdout each at the end)."""
    shown = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0
    listed = set(shown.stdout.replace("family-<model>", " ".join(f"family-{m}" for m in FAMILIES)).split())
    for name in ("1rank-fp32", "1rank-bf16", "1rank-fp16", *NEW_CHECKS, "2rank-nccl", "2rank-gloo", "2rank-mpi4py",
                 "ratio-fp32", "ratio-bf16"):
        assert name in listed, name
    assert all(m in shown.stdout for m in FAMILIES)


def test_cpu_smoke_runs_a_check_and_writes_the_report(tmp_path):
    done = _run(tmp_path, "--cpu-smoke", budget="0")
    report = (tmp_path / "report.md").read_text()
    assert done.returncode == 1, done.stderr[-3000:]  # the checks after the budget are not passes
    assert "CPU smoke: plumbing only, no GPU numbers" in report
    assert "| 1rank-bf16 | 1 | 0 |" in report
    later = ["1rank-fp32", *(f"family-{m}" for m in FAMILIES), *NEW_CHECKS, "2rank-gloo", "ratio-fp32"]
    assert f"skipped (time budget spent): {', '.join(later)}" in report
    lines = done.stdout.splitlines()  # one line per check, then where the report is
    assert lines[0].startswith("PASS 1rank-bf16 (") and lines[-1] == f"report: {tmp_path / 'report.md'}"
    assert lines[1:-1] == [f"SKIP {name} (0 s) (time budget spent)" for name in later]
    r = json.loads((tmp_path / "1rank-bf16.results.json").read_text())
    assert r["precision"] == "bf16" and r["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run tools/gpu_check.sh itself")
def test_gpu_mode_without_cuda_measures_nothing(tmp_path):
    done = _run(tmp_path, timeout=120)
    assert done.returncode == 1
    assert "torch.cuda.is_available()` is False" in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob("*.results.json"))


def test_the_family_checks_cover_every_family_and_run_by_name(tmp_path):
    """Issue 21 item 1: cnn3d crashed on CUDA (channels_last on 5-D weights) and no GPU check ran a 3-D
    model. The checks (cifar_resnet20 and one model of each other family, the script's table) cover
    every family of the registry; --only picks checks by name. The CPU smoke runs the 3-D one alone:
    every family's device paths are checked without a GPU by tests/test_fake_cuda.py."""
    from ddc_hpc.models import _REGISTRY

    table = re.search(r"declare -A family=\((.*?)\n\)", SCRIPT.read_text(), re.S).group(1)
    assert tuple(re.findall(r"^\s*\[(\w+)\]=", table, re.M)) == FAMILIES
    covered = {_REGISTRY[name].family for name in (*FAMILIES, "cifar_resnet20")}
    assert covered == {entry.family for entry in _REGISTRY.values()}
    done = _run(tmp_path, "--cpu-smoke", "--only", "family-cnn3d")
    report = (tmp_path / "report.md").read_text() if (tmp_path / "report.md").exists() else ""
    assert done.returncode == 0, done.stderr[-3000:] + report
    ran = json.loads((tmp_path / "family-cnn3d.results.json").read_text())
    assert ran["model"] == "cnn3d" and ran["compose"]["max_rel_error"] <= 1e-4
    assert [p.name for p in tmp_path.glob("*.results.json")] == ["family-cnn3d.results.json"]  # --only: no other
