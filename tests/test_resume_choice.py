"""Issue 21 item 8 and issue 32 item 1: the choice of what a run resumes from, made at startup
before any work, and a resume at another rank count.

A run stopped at 2 ranks in a global phase (the random baseline) continues at 4 and at 1 ranks: its
batch of a step over all ranks kept (16 and 64 samples a rank), the epoch's position kept (the
epoch's samples are each read once, plus the padding DistributedSampler gives the new count), every
rank count recorded; at 1 rank it computes bit for bit what a run started at 1 rank with 64 samples
a rank computes from the same state. The choice waits run.collective_timeout, not the fixed 300 s of
a World before configure_world."""

from __future__ import annotations

import csv
import json
import re
import shutil
import types

import pytest
import torch

from conftest import TINY, results, run_pipeline, run_pipeline_here
from ddc_hpc import comm, resume, strategies
from ddc_hpc.config import load_config

STOPPED = ("run.strategy=random",)


def _random_samples(out) -> int:
    with open(out / "metrics.csv") as f:
        return int(next(row for row in csv.DictReader(f) if row["phase"] == "random")["train_samples"])


@pytest.mark.ranks(1)
def test_a_run_stopped_at_2_ranks_continues_at_4_and_at_1(tmp_path):
    out, fewer, native = tmp_path / "run", tmp_path / "fewer", tmp_path / "native"
    stopped = run_pipeline(2, out, *STOPPED, env={"DDC_STOP_AT": "random:1:2"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert '"ranks": 2' in (out / "checkpoints" / "random" / "manifest.json").read_text()
    shutil.copytree(out, fewer)
    shutil.copytree(out, native)
    dry = run_pipeline_here(fewer, *STOPPED, extra=("--dry-run",))
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert ("resumes a run stopped at 2 rank(s) at 1; continues random at epoch 1, step 3 with 64 samples a rank "
            "(64 a step, as before)") in dry.stdout
    n = int(re.search(r"(\d+) train / ", dry.stdout).group(1))
    assert f"epoch(s) of {-(-n // 64)} steps (resuming at epoch 1, step 3)" in dry.stdout  # the kept batch's steps
    resumes = ((out, 4, run_pipeline(4, out, *STOPPED)), (fewer, 1, run_pipeline_here(fewer, *STOPPED)))
    for where, ranks, resumed in resumes:
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        log = (where / "logs" / "rank0.log").read_text()
        assert f"[random] continued from a run of 2 rank(s): {64 // ranks} samples a rank" in log
        assert "[random] resuming at epoch 1, step 3" in log
        assert _random_samples(where) == -(-n // ranks) * ranks  # each sample once, and the new count's padding
        assert [(c["ranks"], c["resumed_from"]) for c in results(where)["rank_counts"]] == [
            (2, {}), (ranks, {"random": {"epoch": 0, "step": 2, "finished": False}})]
        assert results(where)["world_size"] == ranks
    # The same stopped state as a run started at 1 rank with 64 samples a rank would hold it: resumed
    # at its own count, it computes what the elastic resume at 1 computed, bit for bit.
    native_sets = [*TINY, *STOPPED, "random.batch_size=64"]
    manifest = native / "checkpoints" / "random" / "manifest.json"
    entries = json.loads(manifest.read_text())
    for entry in entries["checkpoints"]:
        entry.update(config=load_config(None, native_sets).digest(), ranks=1, batch=64)
    manifest.write_text(json.dumps(entries))
    assert run_pipeline_here(native, *native_sets[len(TINY):]).returncode == 0
    assert "continued from a run" not in (native / "logs" / "rank0.log").read_text()
    a, b = (torch.load(d / "random_model.pt", weights_only=False)["state_dict"] for d in (fewer, native))
    assert all(torch.equal(a[k], b[k]) for k in a)
    same = ("loss", "val_accuracy", "lr", "train_samples")
    assert [{k: row[k] for k in same} for row in results(fewer)["random"]["history"]] == [
        {k: row[k] for k in same} for row in results(native)["random"]["history"]]


def test_the_resume_choice_waits_run_collective_timeout(monkeypatch, tmp_path):
    waits = []
    monkeypatch.setattr(comm, "bcast", lambda world, value, what: waits.append(world.timeout) or value)
    monkeypatch.setattr(comm, "raise_first_bad_input", lambda world, error: waits.append(world.timeout))
    config = load_config(None, ["run.collective_timeout=4321"])
    plan = types.SimpleNamespace(config=config, out=tmp_path, partitions=config.decompose.partitions, resume_from={},
                                 phases=strategies.phases(config.run.strategy))
    world = comm.World(rank=0, size=1, local_rank=0, local_size=1, device=torch.device("cpu"))
    assert world.timeout == 300
    resume.choose_resume(plan, world)
    assert waits == [4321, 4321]
